-- ACK(q, receipts): the messages are done. KEYS: q's block (queue_keys), QUEUESET, DUESET.
-- ARGV: the lease context (lease_context), deadline, then the receipts.
-- A current receipt's message leaves the queue: its value is retired (readable by its key for
-- the retention period, like a hard get's). Replies {result1, result2, ...}, one per receipt:
-- 'acked' or 'stale' (see leased in the prelude).
local late = guard(ARGV[7]) if late then return late end
local Q = queue_keys(1)
local ctx = lease_context()
-- The messages leave the in-flight set and their records together, at the end; until then a
-- receipt given twice is known stale by `seen`.
local reply, acked, seen = {}, {}, {}
for i = 8, #ARGV do
  local key = leased(Q, ARGV[i])
  if key and not seen[key] then
    seen[key] = true
    acked[#acked + 1] = key
    retire(key, ctx.retention)
    retire(refcount_of(key), ctx.retention)
    count(Q, 'acked', 1)
    reply[#reply + 1] = 'acked'
  else
    reply[#reply + 1] = 'stale'
  end
end
if #acked > 0 then
  redis.call('ZREM', Q.inflight, unpack(acked))
  forget_all(Q, acked)
end
return reply
