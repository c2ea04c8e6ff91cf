/* RestMQ dashboard: the queue list of /stats/, the state of the queues on screen from
   /info/<q>, and the few actions an operator needs. Every name and value reaches the page as
   text (textContent, never markup). Requests go to this origin with the browser's credentials
   (the ACL's Basic auth) and, once one is entered, the auth key in X-Auth-Key. */
(function () {
  "use strict";

  var REFRESH_MS = 10000;
  // The queue list (/stats/, every queue: the costly read) is refreshed every this many
  // ticks; the queues on screen are read from /info/ at every tick.
  var LIST_EVERY = 3;
  // A reply slower than this counts as failed, so polls never pile up.
  var TIMEOUT_MS = 8000;
  // /info/ requests in flight at once.
  var PARALLEL = 4;
  var Chart = window.RestMQChart;

  var state = {
    stats: {},          // name -> row of /stats/
    names: [],          // every queue, in code point order
    shown: [],          // the names of the page on screen
    infos: {},          // name -> last /info/ reply
    histories: {},      // name -> Chart.History
    rows: {},           // name -> {row, cells}
    filter: "",
    page: 0,
    pageSize: 25,
    selected: null,
    authKey: "",
    loading: false,
    listAge: LIST_EVERY,  // ticks since the list was read
    timer: null
  };

  function byId(id) {
    return document.getElementById(id);
  }

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function empty(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
  }

  // -- messages --------------------------------------------------------------------------------

  // The error line belongs to whoever wrote it last ("load" or "action"), so a successful
  // refresh does not hide a refused action at once.
  var errorSource = null;

  function showError(source, text) {
    errorSource = source;
    byId("error").textContent = text;
    byId("error").hidden = false;
  }

  function clearError(source) {
    if (errorSource === source) {
      errorSource = null;
      byId("error").textContent = "";
      byId("error").hidden = true;
    }
  }

  function notice(text) {
    byId("notice").textContent = text + " (" + new Date().toLocaleTimeString() + ")";
  }

  // -- requests --------------------------------------------------------------------------------

  function path(prefix, name) {
    return prefix + encodeURIComponent(name);
  }

  function form(fields) {
    return Object.keys(fields).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(fields[k]);
    }).join("&");
  }

  // Resolves with {status, body}: body is the parsed JSON reply, or null. Rejects with an
  // Error on a network failure or timeout.
  function api(method, url, fields) {
    var headers = {};
    var init = {method: method, headers: headers, credentials: "same-origin", cache: "no-store"};
    if (state.authKey) {
      headers["X-Auth-Key"] = state.authKey;
    }
    if (fields) {
      headers["Content-Type"] = "application/x-www-form-urlencoded";
      init.body = form(fields);
    }
    var abort = new AbortController();
    init.signal = abort.signal;
    var guard = setTimeout(function () { abort.abort(); }, TIMEOUT_MS);
    return fetch(url, init).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try {
          body = text ? JSON.parse(text) : null;
        } catch (e) {
          body = null;
        }
        return {status: response.status, body: body};
      });
    }, function (e) {
      throw new Error(e.name === "AbortError" ? "no reply within " + TIMEOUT_MS / 1000 + " s"
                                              : "server unreachable");
    }).finally(function () {
      clearTimeout(guard);
    });
  }

  function failure(what, reply) {
    var reason = reply.body && typeof reply.body.error === "string" ? " " + reply.body.error : "";
    var hint = reply.status === 401 ? " (the ACL or the auth key does not allow it)" : "";
    return what + " refused: HTTP " + reply.status + reason + hint;
  }

  // -- the list --------------------------------------------------------------------------------

  // Code point order, as the server sorts (plain < compares UTF-16 units).
  function compareNames(a, b) {
    var i = 0;
    var j = 0;
    while (i < a.length && j < b.length) {
      var ca = a.codePointAt(i);
      var cb = b.codePointAt(j);
      if (ca !== cb) {
        return ca < cb ? -1 : 1;
      }
      i += ca > 0xffff ? 2 : 1;
      j += cb > 0xffff ? 2 : 1;
    }
    return (a.length - i) - (b.length - j);
  }

  function statusText(status) {
    return status === 1 ? "started" : status === 0 ? "stopped" : "-";
  }

  function matching() {
    var filter = state.filter;
    return filter ? state.names.filter(function (n) { return n.indexOf(filter) !== -1; })
                  : state.names;
  }

  function button(label, className, onClick) {
    var b = el("button", label, className);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  var COLUMNS = ["name", "pending", "status", "policy", "priority", "inflight", "delayed",
                 "dead", "added", "consumed", "consumers", "chart", "actions"];

  function buildRow(name) {
    var row = el("tr");
    row.setAttribute("data-queue", name);
    var cells = {};
    COLUMNS.forEach(function (column) {
      var td = el("td");
      td.className = column === "name" ? "name" : column === "chart" || column === "actions"
        || column === "status" || column === "policy" || column === "priority" ? column : "num";
      cells[column] = td;
      row.appendChild(td);
    });
    var link = el("a", name);
    link.href = path("/j/", name);
    cells.name.appendChild(link);
    cells.chart.appendChild(el("canvas", null, "spark"));
    cells.actions.appendChild(button("resume", "start", function () {
      control(name, "start", row);
    }));
    cells.actions.appendChild(button("pause", "pause", function () {
      control(name, "stop", row);
    }));
    cells.actions.appendChild(button("details", "details", function () {
      select(name);
    }));
    return {row: row, cells: cells};
  }

  function priorityText(info) {
    if (!info) {
      return "";
    }
    var levels = info.priority || {};
    var parts = Object.keys(levels).sort(function (a, b) { return b - a; }).map(function (p) {
      return "p" + p + ":" + levels[p];
    });
    var rest = info.pending - Object.keys(levels).reduce(function (sum, p) {
      return sum + levels[p];
    }, 0);
    if (parts.length) {
      parts.push("p0:" + rest);
    }
    return parts.join(" ");
  }

  // The live consumers and waiters of /info/ (counted by the process that answered), or null
  // when the reply has none (a server older than the field).
  function presence(info) {
    var c = info && info.consumers;
    if (!c) {
      return null;
    }
    var streams = c.comet + c.websocket + c.sse;
    return {
      streams: streams,
      total: streams + c.waiter,
      split: "comet " + c.comet + ", WebSocket " + c.websocket + ", SSE " + c.sse,
      waiters: c.waiter,
      listening: info.subscribers
    };
  }

  function presenceTitle(live) {
    return live.split + ", long polls waiting " + live.waiters + " (held by the process that " +
      "answered); processes listening to the queue: " + live.listening;
  }

  function fillRow(name) {
    var entry = state.rows[name];
    var stats = state.stats[name];
    var info = state.infos[name];
    var c = entry.cells;
    var history = state.histories[name];
    var rates = history ? history.latestRates() : null;
    var status = statusText(info ? info.status : stats.status);
    c.pending.textContent = String(info ? info.pending : stats.len);
    c.status.textContent = status;
    c.status.className = "status " + (status === "-" ? "" : status);
    c.policy.textContent = String(info ? info.policy : stats.policy_name);
    c.priority.textContent = priorityText(info);
    c.inflight.textContent = info ? String(info.inflight) : "";
    c.delayed.textContent = info ? String(info.delayed) : "";
    c.dead.textContent = info && info.dead_letter ? String(info.dead_letter.pending) : "";
    c.dead.title = info && info.dead_letter ? "dead-letter queue: " + info.dead_letter.queue : "";
    c.added.textContent = rates ? Chart.formatRate(rates.added) : "";
    c.consumed.textContent = rates ? Chart.formatRate(rates.consumed) : "";
    var live = presence(info);
    c.consumers.textContent = live ? String(live.total) : "";
    c.consumers.title = live ? presenceTitle(live) : "";
    entry.row.classList.toggle("selected", name === state.selected);
    if (history) {
      Chart.sparkline(c.chart.firstChild, history, Date.now());
    }
  }

  function renderList() {
    var names = matching();
    var pages = Math.max(1, Math.ceil(names.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.pageSize;
    state.shown = names.slice(start, start + state.pageSize);

    var tbody = byId("queues");
    var keep = {};
    state.shown.forEach(function (name) {
      keep[name] = true;
      if (!state.rows[name]) {
        state.rows[name] = buildRow(name);
      }
    });
    Object.keys(state.rows).forEach(function (name) {
      if (!keep[name]) {
        delete state.rows[name];
      }
    });
    empty(tbody);
    state.shown.forEach(function (name) {
      tbody.appendChild(state.rows[name].row);
      fillRow(name);
    });

    byId("pageinfo").textContent = names.length ? "queues " + (start + 1) + "-" +
      (start + state.shown.length) + " of " + names.length +
      (state.filter ? " matching (" + state.names.length + " in all)" : "") : "";
    byId("prev").disabled = state.page === 0;
    byId("next").disabled = state.page >= pages - 1;
    byId("empty").hidden = state.names.length !== 0;
    byId("nomatch").hidden = state.names.length === 0 || names.length !== 0;
  }

  // -- polling ---------------------------------------------------------------------------------

  function record(name, info) {
    state.infos[name] = info;
    var history = state.histories[name];
    if (!history) {
      history = state.histories[name] = new Chart.History();
    }
    history.add({t: Date.now(), pending: info.pending, inflight: info.inflight,
                 delayed: info.delayed, added: info.added,
                 dead: info.dead_letter ? info.dead_letter.pending : null});
  }

  // /info/ of `names`, PARALLEL at a time; resolves with the first failure text, or null.
  function loadInfos(names) {
    var queue = names.slice();
    var failed = null;
    function next() {
      var name = queue.shift();
      if (name === undefined) {
        return Promise.resolve();
      }
      return api("GET", path("/info/", name)).then(function (reply) {
        if (reply.status === 200 && reply.body) {
          record(name, reply.body);
          if (state.rows[name]) {
            fillRow(name);
          }
        } else if (!failed) {
          failed = failure("reading /info/ of " + name, reply);
        }
      }, function (e) {
        failed = failed || "reading /info/ of " + name + ": " + e.message;
      }).then(next);
    }
    var workers = [];
    for (var i = 0; i < PARALLEL; i++) {
      workers.push(next());
    }
    return Promise.all(workers).then(function () { return failed; });
  }

  function applyStats(body) {
    var queues = body.queues || {};
    state.stats = queues;
    state.names = Object.keys(queues).sort(compareNames);
    Object.keys(state.histories).forEach(function (name) {
      if (!queues[name]) {  // gone from the server: forget it
        delete state.histories[name];
        delete state.infos[name];
      }
    });
    byId("redis").textContent = String(body.redis);
    byId("count").textContent = String(body.count);
    renderList();
  }

  function loadList() {
    if (state.listAge < LIST_EVERY) {
      state.listAge += 1;
      return Promise.resolve();
    }
    return api("GET", "/stats/").catch(function (e) {
      throw new Error("reading /stats/ failed: " + e.message);
    }).then(function (reply) {
      if (reply.status !== 200 || !reply.body) {
        throw new Error(failure("reading /stats/", reply));
      }
      state.listAge = 1;
      applyStats(reply.body);
    });
  }

  // `fresh`: read the queue list now, whatever its age.
  function load(fresh) {
    if (fresh) {
      state.listAge = LIST_EVERY;
    }
    if (state.loading) {
      return Promise.resolve();
    }
    state.loading = true;
    return loadList().then(function () {
      var names = state.shown.slice();
      if (state.selected && names.indexOf(state.selected) === -1) {
        names.push(state.selected);
      }
      return loadInfos(names);
    }).then(function (failed) {
      byId("updated").textContent = new Date().toLocaleTimeString();
      if (failed) {
        showError("load", failed);
      } else {
        clearError("load");
      }
      renderDetail();
    }, function (e) {
      showError("load", e.message + " (" + new Date().toLocaleTimeString() + "); retrying every " +
                REFRESH_MS / 1000 + " s");
    }).then(function () {
      state.loading = false;
      document.body.setAttribute("data-loaded", String(Date.now()));
    });
  }

  function tick(fresh) {
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, REFRESH_MS);
    return load(fresh === true);
  }

  // -- actions ---------------------------------------------------------------------------------

  function busy(node, on) {
    Array.prototype.forEach.call(node.getElementsByTagName("button"), function (b) {
      b.disabled = on;
    });
  }

  // Runs one action: `what` names it in messages; `done` gets the reply body on success.
  function act(what, method, url, fields, scope, done) {
    busy(scope, true);
    return api(method, url, fields).then(function (reply) {
      // /control/ answers 200 {"stat": "invalid status: ..."} for a status it does not know.
      if (reply.status === 200 && reply.body && !reply.body.error &&
          typeof reply.body.stat !== "string") {
        clearError("action");
        if (done) {
          done(reply.body);
        }
      } else {
        showError("action", failure(what, reply));
      }
    }, function (e) {
      showError("action", what + " failed: " + e.message);
    }).then(function () {
      busy(scope, false);
      tick(true);
    });
  }

  function control(name, status, scope) {
    var verb = status === "start" ? "resuming " : "pausing ";
    return act(verb + name, "POST", path("/control/", name), {status: status}, scope,
               function () { notice(verb.trim() + " " + name + ": done"); });
  }

  function purge(name, scope) {
    return act("purging " + name, "DELETE", path("/q/", name), null, scope, function () {
      notice("purged " + name);
    });
  }

  function redrive(dead, scope) {
    return act("redriving " + dead, "POST", path("/redrive/", dead), {limit: "1000"}, scope,
               function (body) {
                 notice("redrove " + body.moved.length + " from " + dead + ", " +
                        body.remaining + " left" + (body.stopped ? " (stopped: " +
                        body.stopped + ")" : ""));
               });
  }

  // -- the queue in detail ---------------------------------------------------------------------

  function select(name) {
    state.selected = name;
    byId("detail").hidden = false;
    byId("detail-name").textContent = name;
    empty(byId("peek"));
    byId("peek-more").hidden = true;
    byId("purge-confirm").hidden = true;
    loadConfig();
    renderList();
    if (!state.infos[name]) {
      loadInfos([name]).then(renderDetail);
    }
    renderDetail();
    byId("detail").scrollIntoView({block: "nearest"});
  }

  function fact(list, term, value, title) {
    var dt = el("dt", term);
    if (title) {
      dt.title = title;
    }
    list.appendChild(dt);
    list.appendChild(el("dd", value));
  }

  var BY_ANSWERER = "counted by the RestMQ process that answered /info/: behind a port " +
    "shared by several processes, that one's only";

  function presenceFacts(facts, info) {
    var live = presence(info);
    if (!live) {
      fact(facts, "live consumers", "not reported by this server");
      return;
    }
    fact(facts, "live consumers", live.streams ? live.streams + ": " + live.split : "0",
         "comet, WebSocket and SSE streams, " + BY_ANSWERER);
    fact(facts, "long polls waiting", String(live.waiters), "claims and pops waiting, " +
         BY_ANSWERER);
    fact(facts, "processes listening", String(live.listening), "subscribers of the queue's " +
         "channel in Redis, fleet-wide: the processes holding a live consumer, a long poll " +
         "or a push dispatcher of the queue (not consumers)");
  }

  function renderDetail() {
    var name = state.selected;
    if (name === null) {
      return;
    }
    var info = state.infos[name];
    var facts = byId("facts");
    empty(facts);
    if (!info) {
      fact(facts, "state", "loading...");
      return;
    }
    var history = state.histories[name];
    var rates = history.latestRates();
    fact(facts, "pending", String(info.pending));
    fact(facts, "by priority", priorityText(info) || "all at priority 0");
    fact(facts, "in flight", String(info.inflight));
    fact(facts, "delayed", String(info.delayed));
    fact(facts, "dead letters", info.dead_letter ? info.dead_letter.pending + " in " +
         info.dead_letter.queue : "no dead-letter queue configured");
    fact(facts, "next due", info.next_due === null ? "-" :
         new Date(info.next_due * 1000).toLocaleString());
    fact(facts, "status", statusText(info.status));
    fact(facts, "policy", String(info.policy));
    fact(facts, "added (ever)", String(info.added));
    fact(facts, "added/s", rates ? Chart.formatRate(rates.added) : "-");
    fact(facts, "consumed/s", rates ? Chart.formatRate(rates.consumed) : "-");
    presenceFacts(facts, info);
    var dead = byId("redrive-dead");
    dead.hidden = !info.dead_letter;
    dead.textContent = info.dead_letter ? "redrive the dead letters of " +
      info.dead_letter.queue : "";
    Chart.detailChart(byId("chart"), history, Date.now());
  }

  function peek(after) {
    var name = state.selected;
    var url = path("/peek/", name) + "?limit=10" + (after ? "&after=" +
                                                    encodeURIComponent(after) : "");
    var list = byId("peek");
    if (!after) {
      empty(list);
    }
    act("peeking at " + name, "GET", url, null, byId("peek-box"), function (body) {
      if (!after && !body.messages.length) {
        list.appendChild(el("li", "nothing pending", "none"));
      }
      body.messages.forEach(function (m) {
        var item = el("li");
        item.appendChild(el("code", m.key, "key"));
        item.appendChild(el("span", "p" + m.priority, "prio"));
        item.appendChild(el("span", m.value, "value"));
        list.appendChild(item);
      });
      var more = byId("peek-more");
      more.hidden = body.next === null;
      more.setAttribute("data-after", body.next || "");
    });
  }

  // -- configuration ---------------------------------------------------------------------------

  var loadedConfig = null;  // {queue, config, set} as read

  function loadConfig() {
    var name = state.selected;
    var table = byId("config");
    empty(table);
    loadedConfig = null;
    api("GET", path("/config/", name)).then(function (reply) {
      if (name !== state.selected) {
        return;
      }
      if (reply.status !== 200 || !reply.body) {
        showError("action", failure("reading the configuration of " + name, reply));
        return;
      }
      showConfig(reply.body);
    }, function (e) {
      showError("action", "reading the configuration of " + name + ": " + e.message);
    });
  }

  function showConfig(body) {
    loadedConfig = body;
    var table = byId("config");
    empty(table);
    Object.keys(body.config).sort().forEach(function (attribute) {
      var value = body.config[attribute];
      var stored = body.set.indexOf(attribute) !== -1;
      var row = el("tr");
      row.appendChild(el("th", attribute));
      var input = el("input");
      input.name = attribute;
      input.value = stored && value !== null ? String(value) : "";
      input.placeholder = value === null ? "unset" : "default " + value;
      input.setAttribute("data-stored", stored ? input.value : "");
      input.setAttribute("aria-label", attribute);
      var cell = el("td");
      cell.appendChild(input);
      row.appendChild(cell);
      row.appendChild(el("td", stored ? "set" : "default", "origin"));
      table.appendChild(row);
    });
  }

  // Only what the operator changed is sent: an emptied field unsets the attribute, so a
  // value the server shows masked (push_auth) is never written back.
  function saveConfig() {
    var name = state.selected;
    var fields = {};
    var unset = [];
    Array.prototype.forEach.call(byId("config").getElementsByTagName("input"), function (input) {
      var before = input.getAttribute("data-stored");
      var now = input.value.trim();
      if (now === before) {
        return;
      }
      if (now === "") {
        unset.push(input.name);
      } else {
        fields[input.name] = now;
      }
    });
    if (unset.length) {
      fields.unset = unset.join(",");
    }
    if (!Object.keys(fields).length) {
      notice("configuration of " + name + ": nothing changed");
      return;
    }
    act("changing the configuration of " + name, "POST", path("/config/", name), fields,
        byId("config-box"), function (body) {
          showConfig(body);
          notice("configuration of " + name + " saved");
        });
  }

  function clearConfig() {
    var name = state.selected;
    act("clearing the configuration of " + name, "DELETE", path("/config/", name), null,
        byId("config-box"), function () {
          notice("configuration of " + name + " cleared");
          loadConfig();
        });
  }

  // -- wiring ----------------------------------------------------------------------------------

  function wire() {
    var typing = null;
    byId("filter").addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(function () {
        state.filter = byId("filter").value;
        state.page = 0;
        renderList();
        loadInfos(state.shown);
      }, 200);
    });
    byId("pagesize").addEventListener("change", function () {
      state.pageSize = parseInt(byId("pagesize").value, 10) || 25;
      state.page = 0;
      renderList();
      loadInfos(state.shown);
    });
    byId("prev").addEventListener("click", function () {
      state.page = Math.max(0, state.page - 1);
      renderList();
      loadInfos(state.shown);
    });
    byId("next").addEventListener("click", function () {
      state.page += 1;
      renderList();
      loadInfos(state.shown);
    });
    byId("key-form").addEventListener("submit", function (event) {
      event.preventDefault();
      state.authKey = byId("authkey").value.trim();
      byId("key-state").textContent = state.authKey ? "requests carry this key" : "no key";
      tick(true);
    });
    byId("key-clear").addEventListener("click", function () {
      byId("authkey").value = "";
      state.authKey = "";
      byId("key-state").textContent = "no key";
      tick(true);
    });
    var detail = byId("detail");
    byId("close").addEventListener("click", function () {
      state.selected = null;
      detail.hidden = true;
      renderList();
    });
    byId("d-resume").addEventListener("click", function () {
      control(state.selected, "start", byId("actions"));
    });
    byId("d-pause").addEventListener("click", function () {
      control(state.selected, "stop", byId("actions"));
    });
    byId("purge").addEventListener("click", function () {
      var info = state.infos[state.selected];
      byId("purge-question").textContent = "Purge " + state.selected + "? " +
        (info ? info.pending + " pending, " + info.inflight + " in flight and " +
         info.delayed + " delayed messages" : "Its messages") + " will be deleted.";
      byId("purge-confirm").hidden = false;
    });
    byId("purge-yes").addEventListener("click", function () {
      byId("purge-confirm").hidden = true;
      purge(state.selected, byId("actions"));
    });
    byId("purge-no").addEventListener("click", function () {
      byId("purge-confirm").hidden = true;
    });
    byId("redrive-dead").addEventListener("click", function () {
      var info = state.infos[state.selected];
      if (info && info.dead_letter) {
        redrive(info.dead_letter.queue, byId("actions"));
      }
    });
    byId("redrive-self").addEventListener("click", function () {
      redrive(state.selected, byId("actions"));
    });
    byId("peek-first").addEventListener("click", function () {
      peek(null);
    });
    byId("peek-more").addEventListener("click", function () {
      peek(byId("peek-more").getAttribute("data-after"));
    });
    byId("config-box").addEventListener("submit", function (event) {
      event.preventDefault();
      saveConfig();
    });
    byId("config-clear").addEventListener("click", clearConfig);
    byId("config-reload").addEventListener("click", loadConfig);
  }

  wire();
  tick();
})();
