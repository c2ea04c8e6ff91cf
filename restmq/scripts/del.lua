-- DEL(q, key): ARGV = queue, key, deadline. Returns the number of value keys deleted.
local q, key = ARGV[1], ARGV[2]
if expired(ARGV[3]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local deleted = redis.call('DEL', key)
redis.call('LREM', q .. ':queue', 0, key)
redis.call('DEL', key .. ':refcount')
return deleted
