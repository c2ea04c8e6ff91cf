-- ADD_ONCE(q, value). KEYS: as ADD (add.lua). ARGV: queue name, value, channel, db, window,
-- deadline. An ADD for a retry whose first try timed out: that try either ran before its
-- deadline, and then one of the `window` newest pending messages holds exactly this value (its
-- key is returned, nothing is added), or it will never run (see guard in the prelude).
local late = guard(ARGV[6]) if late then return late end
local pending, counter, queueset, status = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local q, value, channel, db = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local window = tonumber(ARGV[5])
for _, key in ipairs(redis.call('LRANGE', pending, 0, window - 1)) do
  if redis.call('GET', key) == value then
    return key
  end
end
local key = value_key(counter, redis.call('INCR', counter))
redis.call('SET', key, value)
redis.call('SADD', queueset, q)
redis.call('SETNX', status, '1')
redis.call('LPUSH', pending, key)
redis.call('PUBLISH', channel, '{"type": "wake", "db": ' .. db .. '}')
return key
