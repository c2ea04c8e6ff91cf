-- ADD(q, value[, ttl]). KEYS: <q>:queue, <q>:UUID, QUEUESET, queuestat::<q>. ARGV: queue name
-- (the member of QUEUESET), value, ttl ('' for none), channel, db, deadline. Returns the new key.
local late = guard(ARGV[6]) if late then return late end
local pending, counter, queueset, status = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local q, value, ttl, channel, db = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local key = value_key(counter, redis.call('INCR', counter))
if ttl then
  redis.call('SET', key, value, 'EX', ttl)
else
  redis.call('SET', key, value)
end
redis.call('SADD', queueset, q)
redis.call('SETNX', status, '1')
redis.call('LPUSH', pending, key)
redis.call('PUBLISH', channel, '{"type": "wake", "db": ' .. db .. '}')
return key
