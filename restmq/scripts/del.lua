-- DEL(q, key): ARGV = queue, key. Returns the number of value keys deleted.
local q, key = ARGV[1], ARGV[2]
local deleted = redis.call('DEL', key)
redis.call('LREM', q .. ':queue', 0, key)
redis.call('DEL', key .. ':refcount')
return deleted
