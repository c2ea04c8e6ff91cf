-- SOFT_GET(q): ARGV = queue, deadline. Returns {key, value, count} or nil; nothing is
-- consumed, only dead entries at the tail are removed.
local pending = ARGV[1] .. ':queue'
if expired(ARGV[2]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
while true do
  local key = redis.call('LINDEX', pending, -1)
  if not key then
    return nil
  end
  local value = redis.call('GET', key)
  if value then
    local count = redis.call('INCR', key .. ':refcount')
    local pttl = redis.call('PTTL', key)
    if pttl > 0 then
      redis.call('PEXPIRE', key .. ':refcount', pttl)
    end
    return {key, value, count}
  end
  redis.call('RPOP', pending)
  redis.call('DEL', key .. ':refcount')
end
