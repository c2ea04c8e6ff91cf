-- PURGE(q): ARGV = queue, retention, db, deadline. Returns 1 if a pending list existed.
local q, retention, db = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if expired(ARGV[4]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local pending = q .. ':queue'
local keys = redis.call('LRANGE', pending, 0, -1)
local existed = redis.call('DEL', pending)
for _, key in ipairs(keys) do
  retire(key, retention)
  retire(key .. ':refcount', retention)
end
redis.call('PUBLISH', q .. ':PUBSUB', '{"type": "purge", "db": ' .. db .. '}')
return existed
