-- TAKE(q): ARGV = queue, deadline. Returns {key, value} or nil; the message is deleted.
local pending = ARGV[1] .. ':queue'
if expired(ARGV[2]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
while true do
  local key = redis.call('RPOP', pending)
  if not key then
    return nil
  end
  local value = redis.call('GET', key)
  redis.call('DEL', key, key .. ':refcount')
  if value then
    return {key, value}
  end
end
