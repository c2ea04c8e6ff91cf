-- ADD(q, value[, ttl]): ARGV = queue, value, ttl ('' for none), db, deadline (see
-- _deadline.lua). Returns the new key.
local q, value, ttl, db = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if expired(ARGV[5]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local n = redis.call('INCR', q .. ':UUID')
local key = q .. ':' .. n
if ttl then
  redis.call('SET', key, value, 'EX', ttl)
else
  redis.call('SET', key, value)
end
redis.call('SADD', 'QUEUESET', q)
redis.call('SETNX', 'queuestat::' .. q, '1')
redis.call('LPUSH', q .. ':queue', key)
redis.call('PUBLISH', q .. ':PUBSUB', '{"type": "wake", "db": ' .. db .. '}')
return key
