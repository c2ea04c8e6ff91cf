-- POP_BATCH(q). KEYS: q's block (queue_keys). ARGV: channel, db, max messages, max bytes,
-- dead limit, deadline. Priority messages come first.
-- Returns {policy, more, key1, value1, priority1, key2, ...}; an empty reply when the queue is
-- not started. `more` is 1 when the batch stopped after `limit` dead entries (the caller may
-- pop again: more may be pending), else 0. Under broadcast the batch is published for every
-- process to write (the caller never writes it itself). Nothing is popped for broadcast while
-- no process is subscribed to the channel: a pop held up (a write pause, a failover) until the
-- last consumer left would otherwise publish its batch to nobody.
local late = guard(ARGV[6]) if late then return late end
local Q = queue_keys(1)
local channel, db, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local max_count, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('GET', Q.status) ~= '1' then
  return {}
end
local policy = 'broadcast'
if redis.call('GET', Q.policy) == '2' then
  policy = 'roundrobin'
elseif redis.call('PUBSUB', 'NUMSUB', channel)[2] == 0 then
  return {policy, 0}
end
local reply, messages, taken, size, dead = {policy, 0}, {}, 0, 0, 0
while taken < max_count and size < max_bytes do
  local key, value, skipped, level = next_live(Q, limit - dead)
  dead = dead + skipped
  if not key then
    if value then
      reply[2] = 1  -- 'MORE': `limit` dead entries were removed
    end
    break
  end
  redis.call('DEL', key, refcount_of(key))
  forget(Q, key)
  taken = taken + 1
  size = size + #value
  reply[#reply + 1] = key
  reply[#reply + 1] = value
  reply[#reply + 1] = level  -- a put-back returns the message to its level
  messages[taken] = {key = key, value = value}
end
if taken > 0 then
  count(Q, 'delivered_live', taken)
end
if taken > 0 and policy == 'broadcast' then
  redis.call('PUBLISH', channel, cjson.encode({type = 'batch', db = db, messages = messages}))
end
return reply
