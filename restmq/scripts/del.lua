-- DEL(q, key). KEYS: q's block (queue_keys), the value key. ARGV: deadline. Returns the number
-- of value keys deleted. The key leaves every place a message can be: pending (either
-- level), leased, delayed.
local late = guard(ARGV[1]) if late then return late end
local Q, key = queue_keys(1), KEYS[BLOCK + 1]
local deleted = redis.call('DEL', key)
redis.call('LREM', Q.pending, 0, key)
redis.call('ZREM', Q.priority, key)
redis.call('ZREM', Q.inflight, key)
redis.call('ZREM', Q.delayed, key)
redis.call('DEL', refcount_of(key))
forget(Q, key)
return deleted
