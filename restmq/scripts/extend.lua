-- EXTEND(q, receipts, lease): the leases now end `lease` ms from now (sooner or later than
-- before). KEYS: q's block (queue_keys), QUEUESET, DUESET. ARGV: the lease context
-- (lease_context), deadline, lease ms, then the receipts.
-- Replies {now, result1, result2, ...}, one per receipt: 'extended' or 'stale' (see leased in
-- the prelude).
local now = now_ms()
local late = guard(ARGV[7], now) if late then return late end
local Q, G = queue_keys(1), global_keys(BLOCK + 1)
local ctx = lease_context()
local lease = tonumber(ARGV[8])
local reply, extended = {now}, false
for i = 9, #ARGV do
  local key = leased(Q, ARGV[i])
  if key then
    redis.call('ZADD', Q.inflight, now + lease, key)
    extended = true
    reply[#reply + 1] = 'extended'
  else
    reply[#reply + 1] = 'stale'
  end
end
if extended then
  due(G, ctx.queue, now + lease)
end
return reply
