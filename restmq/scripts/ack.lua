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
local numbers, asked, named = {}, {}, {}  -- per receipt that parses: n, the field it needs
local position = {}  -- per receipt: its place in those, or false when it does not parse
for i = 8, #ARGV do
  local n, field = receipt_parts(ARGV[i])
  position[#position + 1] = n and #numbers + 1 or false
  if n then
    numbers[#numbers + 1], asked[#numbers + 1] = n, field
    named[#named + 1] = value_key(Q.counter, n)
  end
end
local fields = {}
if #named > 0 then
  fields = redis.call('HMGET', Q.deliveries, unpack(named))
end
local reply, acked, done, seen = {}, {}, {}, {}
for r, at in ipairs(position) do
  local key = nil
  if at then
    key = value_key(Q.counter, numbers[at])
  end
  if key and fields[at] == asked[at] and not seen[key] then
    seen[key] = true
    acked[#acked + 1] = key
    done[#done + 1] = numbers[at]
    retire(key, ctx.retention)
    count(Q, 'acked', 1)
    reply[r] = 'acked'
  else
    reply[r] = 'stale'
  end
end
if #acked > 0 then
  local refcounts = {}
  for i, n in ipairs(done) do
    refcounts[i] = refcount_of(value_key(Q.counter, n))
  end
  if redis.call('EXISTS', unpack(refcounts)) > 0 then
    for _, n in ipairs(done) do
      retire(refcount_of(value_key(Q.counter, n)), ctx.retention)
    end
  end
  redis.call('ZREM', Q.inflight, unpack(acked))
  forget_all(Q, acked)
end
return reply
