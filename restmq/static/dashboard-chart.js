/* RestMQ dashboard: the samples the page keeps of each queue, the rates derived from them, and
   the canvas charts drawn from both. No server-side storage: a queue's history starts when the
   page first shows it and lives only in this page. */
(function () {
  "use strict";

  var WINDOW_MS = 15 * 60 * 1000;

  // A sample: {t: ms, pending, inflight, delayed, dead, added}. `added` is /info/'s key
  // counter (every message ever numbered in the queue); `dead` the pending count of the
  // queue's dead-letter queue, or null.
  function History() {
    this.samples = [];
  }

  History.prototype.add = function (sample) {
    var samples = this.samples;
    var last = samples[samples.length - 1];
    if (last && sample.t <= last.t) {
      return;  // a reply that overtook a later one: time must move forward
    }
    samples.push(sample);
    while (samples.length && samples[0].t < sample.t - WINDOW_MS) {
      samples.shift();
    }
  };

  History.prototype.latestRates = function () {
    var n = this.samples.length;
    return n < 2 ? null : rates(this.samples[n - 2], this.samples[n - 1]);
  };

  function depth(s) {
    return s.pending + s.inflight + s.delayed;
  }

  // Added per second: growth of the key counter. Consumed per second: what was added less
  // what the queue grew by, i.e. the messages that left it (taken, acknowledged,
  // dead-lettered, expired or purged). A counter that went back (the queue's keys were
  // deleted by hand) gives no rate rather than a negative one.
  function rates(a, b) {
    var seconds = (b.t - a.t) / 1000;
    var added = b.added - a.added;
    if (seconds <= 0 || added < 0) {
      return {t: b.t, added: null, consumed: null};
    }
    var left = added - (depth(b) - depth(a));
    return {t: b.t, added: added / seconds, consumed: Math.max(0, left) / seconds};
  }

  function rateSeries(samples) {
    var out = [];
    for (var i = 1; i < samples.length; i++) {
      out.push(rates(samples[i - 1], samples[i]));
    }
    return out;
  }

  function formatRate(value) {
    if (value === null || value === undefined) {
      return "-";
    }
    if (value === 0) {
      return "0";
    }
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  function formatCount(value) {
    if (value >= 1e6) {
      return (value / 1e6).toFixed(value >= 1e7 ? 0 : 1) + "M";
    }
    if (value >= 1e4) {
      return (value / 1e3).toFixed(0) + "k";
    }
    return String(Math.round(value * 100) / 100);
  }

  // -- drawing -------------------------------------------------------------------------------

  function prepare(canvas) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth || canvas.width;
    var height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return {ctx: ctx, width: width, height: height};
  }

  function maxOf(points, fields) {
    var top = 0;
    points.forEach(function (p) {
      fields.forEach(function (f) {
        if (p[f] !== null && p[f] > top) {
          top = p[f];
        }
      });
    });
    return top;
  }

  // One line per field over the box {x, y, w, h}; time runs from now - 15 min to now.
  function lines(ctx, box, points, series, top, now) {
    series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      var drawing = false;
      points.forEach(function (p) {
        var v = p[s.field];
        if (v === null || v === undefined) {
          drawing = false;
          return;
        }
        var x = box.x + box.w * (1 - (now - p.t) / WINDOW_MS);
        var y = box.y + box.h - (top > 0 ? box.h * v / top : 0);
        if (drawing) {
          ctx.lineTo(x, y);
        } else {
          ctx.moveTo(x, y);
          drawing = true;
        }
      });
      ctx.stroke();
    });
  }

  var DEPTH = [{field: "pending", color: "#1f6feb", label: "pending"},
               {field: "inflight", color: "#d97706", label: "in flight"},
               {field: "delayed", color: "#7c3aed", label: "delayed"},
               {field: "dead", color: "#b3261e", label: "dead letters"}];
  var RATES = [{field: "added", color: "#1e7b34", label: "added/s"},
               {field: "consumed", color: "#0e7490", label: "consumed/s"}];

  // The small chart of a row: depth (pending + in flight + delayed) over 15 minutes.
  function sparkline(canvas, history, now) {
    var area = prepare(canvas);
    var points = history.samples.map(function (s) {
      return {t: s.t, depth: depth(s)};
    });
    var top = maxOf(points, ["depth"]);
    area.ctx.fillStyle = "#f0f4f8";
    area.ctx.fillRect(0, 0, area.width, area.height);
    lines(area.ctx, {x: 0, y: 2, w: area.width, h: area.height - 4}, points,
          [{field: "depth", color: "#1f6feb"}], top, now);
  }

  function pane(ctx, box, title, points, series, now) {
    var top = maxOf(points, series.map(function (s) { return s.field; }));
    ctx.fillStyle = "#fff";
    ctx.fillRect(box.x, box.y, box.w, box.h);
    ctx.strokeStyle = "#d9e2ec";
    ctx.strokeRect(box.x + 0.5, box.y + 0.5, box.w - 1, box.h - 1);
    ctx.fillStyle = "#52606d";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.fillText(title + " (max " + formatCount(top) + ")", box.x + 4, box.y + 3);
    var x = box.x + 4 + ctx.measureText(title + " (max " + formatCount(top) + ")").width + 12;
    series.forEach(function (s) {
      ctx.fillStyle = s.color;
      ctx.fillRect(x, box.y + 6, 10, 3);
      ctx.fillStyle = "#52606d";
      ctx.fillText(s.label, x + 13, box.y + 3);
      x += 13 + ctx.measureText(s.label).width + 10;
    });
    lines(ctx, {x: box.x, y: box.y + 18, w: box.w, h: box.h - 22}, points, series, top, now);
  }

  // The chart of the queue in detail: depths above, rates below, the last 15 minutes.
  function detailChart(canvas, history, now) {
    var area = prepare(canvas);
    var ctx = area.ctx;
    var half = Math.floor((area.height - 16) / 2);
    pane(ctx, {x: 0, y: 0, w: area.width, h: half - 2}, "depth", history.samples, DEPTH, now);
    pane(ctx, {x: 0, y: half + 2, w: area.width, h: half - 2}, "rates",
         rateSeries(history.samples), RATES, now);
    ctx.fillStyle = "#7b8794";
    ctx.textBaseline = "bottom";
    ["-15 min", "-10 min", "-5 min", "now"].forEach(function (label, i) {
      var x = area.width * i / 3;
      var w = ctx.measureText(label).width;
      ctx.fillText(label, Math.min(Math.max(0, x - w / 2), area.width - w), area.height);
    });
  }

  window.RestMQChart = {
    History: History,
    rates: rates,
    formatRate: formatRate,
    sparkline: sparkline,
    detailChart: detailChart,
    WINDOW_MS: WINDOW_MS
  };
})();
