-- CLAIM(q, limit, lease, token, mode): lease up to `limit` messages, in consumption order.
-- KEYS: q's block (queue_keys), QUEUESET, DUESET, then the block of q's dead-letter queue
-- when the caller names one. ARGV: the lease context (lease_context: queue, channel, db,
-- retention, dead-letter queue, its channel), deadline, limit, lease ms ('' for the queue's
-- configured lease, else 30 s), token (16 hex digits, this request's), mode ('claim', 'pop'
-- or 'push': what is counted), dead limit.
-- Each message taken gets delivery count c (one more than before) and stays in Redis, leased
-- until now + lease: its deliveries field holds 'c.token', which is what makes its receipt
-- <n>.<c>.<token> current. A message already delivered max_attempts times (the setting was
-- lowered meanwhile) is dead-lettered instead.
-- Replies {now, lease, key1, value1, c1, key2, ...} (nothing found: {now, lease}), lease in
-- ms; 'MORE' when `dead limit` dead entries were removed before anything was found (run it
-- again); {'dead_letter', name} when the dead-letter queue is not the one whose keys were
-- given (nothing written).
local now = now_ms()
local late = guard(ARGV[7], now) if late then return late end
local Q, G, D = queue_keys(1), global_keys(BLOCK + 1), queue_keys(BLOCK + 3)
local ctx = lease_context()
local limit, lease, token, mode = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], ARGV[11]
lease = lease or (tonumber(redis.call('HGET', Q.config, 'lease')) or 30) * 1000
local dead_limit = tonumber(ARGV[12])
local COUNTERS = {claim = 'delivered_claim', pop = 'read_pop', push = 'delivered_push'}
local max_attempts, wrong = check_dead_letter(Q, ctx)
if wrong then
  return wrong
end

local reply = {now, lease}
local taken, more = take_leases(Q, D, G, ctx, now, limit, lease, token, dead_limit, reply,
                                 max_attempts)
if more then
  return more
end
if taken > 0 then
  count(Q, COUNTERS[mode], taken)
end
wake_dead_letter(ctx)
return reply
