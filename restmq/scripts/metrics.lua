-- METRICS of a page of queues (the server reads QUEUESET first, then sends one run per 500
-- queues, all in one pipeline, so that no run holds Redis for long). Read-only.
-- KEYS: for each queue <q>:queue, <q>:priority, <q>:inflight, <q>:delayed, queuestat::<q>,
-- <q>:UUID, <q>:config, and, when counting, <q>:counters. ARGV: none.
-- Returns one JSON text (decoded in one step on the server, however many queues): an array
-- with, per queue, [pending (every level), in flight, delayed, status or '', the key
-- counter or '', the dead-letter queue or '', and, when counting, the counters' fields and
-- values as one flat array], or false for a queue one of whose keys has the wrong type
-- (written by other software): that queue is left out, not the page.
local stride = COUNTING and 8 or 7

local function row_of(i)
  local row = {redis.call('LLEN', KEYS[i]) + redis.call('ZCARD', KEYS[i + 1]),
               redis.call('ZCARD', KEYS[i + 2]), redis.call('ZCARD', KEYS[i + 3]),
               redis.call('GET', KEYS[i + 4]) or '', redis.call('GET', KEYS[i + 5]) or '',
               redis.call('HGET', KEYS[i + 6], 'dead_letter') or ''}
  if COUNTING then
    row[7] = redis.call('HGETALL', KEYS[i + 7])
  end
  return row
end

local out = {}
for i = 1, #KEYS, stride do
  local ok, row = pcall(row_of, i)
  out[#out + 1] = ok and row or false
end
return cjson.encode(out)
