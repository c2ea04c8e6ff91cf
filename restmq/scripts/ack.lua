-- ACK(q, receipts): the messages are done. KEYS: q's block (queue_keys), QUEUESET, DUESET.
-- ARGV: the lease context (lease_context), deadline, then the receipts.
-- A current receipt's message leaves the queue: its value is retired (readable by its key for
-- the retention period, like a hard get's). Replies {result1, result2, ...}, one per receipt:
-- 'acked' or 'stale' (see leased in the prelude).
local late = guard(ARGV[7]) if late then return late end
local Q = queue_keys(1)
local ctx = lease_context()
-- The receipts' delivery fields are read together; the messages leave the in-flight set and
-- their records together, at the end; until then a receipt given twice is known stale by
-- `seen`. Read counts are rare: one look tells whether any of them needs retiring.
local reply, numbers, asked, place = {}, {}, {}, {}  -- per receipt that parses: n, the field
for i = 8, #ARGV do                                   -- it needs, its place in the reply
  reply[i - 7] = 'stale'
  local n, field = receipt_parts(ARGV[i])
  if n then
    local at = #numbers + 1
    numbers[at], asked[at], place[at] = n, field, i - 7
  end
end
if #numbers == 0 then
  return reply
end
local named = {}
for at, n in ipairs(numbers) do
  named[at] = value_key(Q.counter, n)
end
local fields = redis.call('HMGET', Q.deliveries, unpack(named))
local acked, done, refcounts, seen = {}, {}, {}, {}
local ttl = tostring(ctx.retention)
for at, n in ipairs(numbers) do
  local key = value_key(Q.counter, n)
  if fields[at] == asked[at] and not seen[key] then
    seen[key] = true
    acked[#acked + 1] = key
    done[#done + 1] = n
    refcounts[#refcounts + 1] = refcount_of(key)
    retire(key, ctx.retention, ttl)
    reply[place[at]] = 'acked'
  end
end
if #acked > 0 then
  if redis.call('EXISTS', unpack(refcounts)) > 0 then
    for _, n in ipairs(done) do
      retire(refcount_of(value_key(Q.counter, n)), ctx.retention, ttl)
    end
  end
  count(Q, 'acked', #acked)
  redis.call('ZREM', Q.inflight, unpack(acked))
  forget_all(Q, acked)
end
return reply
