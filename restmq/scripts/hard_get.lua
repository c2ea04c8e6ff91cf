-- HARD_GET(q): ARGV = queue, retention, deadline. Returns {key, value} or nil.
local q, retention = ARGV[1], tonumber(ARGV[2])
if expired(ARGV[3]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local pending = q .. ':queue'
while true do
  local key = redis.call('RPOP', pending)
  if not key then
    return nil
  end
  local value = redis.call('GET', key)
  if value then
    retire(key, retention)
    retire(key .. ':refcount', retention)
    return {key, value}
  end
  redis.call('DEL', key .. ':refcount')  -- dead entry: skip it
end
