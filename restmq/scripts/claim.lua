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

-- Nothing below adds to the priority levels: one look tells whether they need reading at all.
-- The leases enter the in-flight set and the delivery counts their hash together, at the end.
local flat = redis.call('EXISTS', Q.priority) == 0
local reply, taken, dead, leases, fields = {now, lease}, 0, 0, {}, {}
local counted = {}  -- key -> its count, once taken here (a key listed twice is taken twice)

-- take(key, value, field): the message `key`, whose deliveries field was `field`.
local function take(key, value, field)
  local c = (counted[key] or tonumber(field and field:match('^(%d+)') or 0)) + 1
  if max_attempts > 0 and c > max_attempts then
    dead_letter(Q, D, G, ctx, key, c - 1, 'max_attempts', now)
    return
  end
  counted[key] = c
  fields[#fields + 1] = key
  fields[#fields + 1] = c .. '.' .. token
  leases[#leases + 1] = now + lease
  leases[#leases + 1] = key
  taken = taken + 1
  reply[#reply + 1] = key
  reply[#reply + 1] = value
  reply[#reply + 1] = c
end

if flat then
  -- Only the pending list: its keys, values and counts a batch at a time, a few commands for
  -- the whole claim rather than four a message. A dead entry (its value gone) is forgotten.
  while taken < limit and dead < dead_limit do
    local popped = redis.call('RPOP', Q.pending, limit - taken)
    if not popped then
      break
    end
    local batch = {}
    for i, key in ipairs(popped) do
      batch[i] = key
    end
    local values = redis.call('MGET', unpack(batch))
    local counts = redis.call('HMGET', Q.deliveries, unpack(batch))
    local gone, refcounts = {}, {}
    for i, key in ipairs(popped) do
      if values[i] then
        take(key, values[i], counts[i])
      else
        gone[#gone + 1] = key
        refcounts[#refcounts + 1] = refcount_of(key)
      end
    end
    if #gone > 0 then
      dead = dead + #gone
      redis.call('DEL', unpack(refcounts))
      forget_all(Q, gone)
    end
  end
  if taken == 0 and dead >= dead_limit then
    return 'MORE'
  end
else
  while taken < limit do
    local key, value, skipped = next_live(Q, dead_limit - dead)
    dead = dead + skipped
    if not key then
      if value and taken == 0 then
        return value  -- 'MORE'
      end
      break
    end
    take(key, value, redis.call('HGET', Q.deliveries, key))
  end
end
if #fields > 0 then
  redis.call('HSET', Q.deliveries, unpack(fields))
end
if taken > 0 then
  redis.call('ZADD', Q.inflight, unpack(leases))
  due(G, ctx.queue, now + lease)
  count(Q, COUNTERS[mode], taken)
end
wake_dead_letter(ctx)
return reply
