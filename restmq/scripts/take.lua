-- TAKE(q): ARGV = queue. Returns {key, value} or nil; the message is deleted.
local pending = ARGV[1] .. ':queue'
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
