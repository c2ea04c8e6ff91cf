-- ADD_ONCE(q, value): ARGV = queue, value, db, window, deadline. An ADD for a retry whose
-- first try timed out: that try either ran before its deadline, and then one of the `window`
-- newest pending messages holds exactly this value (its key is returned, nothing is added),
-- or it will never run (see _deadline.lua).
local q, value, db, window = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if expired(ARGV[5]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local pending = q .. ':queue'
for _, key in ipairs(redis.call('LRANGE', pending, 0, window - 1)) do
  if redis.call('GET', key) == value then
    return key
  end
end
local n = redis.call('INCR', q .. ':UUID')
local key = q .. ':' .. n
redis.call('SET', key, value)
redis.call('SADD', 'QUEUESET', q)
redis.call('SETNX', 'queuestat::' .. q, '1')
redis.call('LPUSH', pending, key)
redis.call('PUBLISH', q .. ':PUBSUB', '{"type": "wake", "db": ' .. db .. '}')
return key
