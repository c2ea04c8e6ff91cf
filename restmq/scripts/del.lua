-- DEL(q, key). KEYS: <q>:queue, the value key. ARGV: deadline. Returns the number of value keys
-- deleted.
local late = guard(ARGV[1]) if late then return late end
local pending, key = KEYS[1], KEYS[2]
local deleted = redis.call('DEL', key)
redis.call('LREM', pending, 0, key)
redis.call('DEL', refcount_of(key))
return deleted
