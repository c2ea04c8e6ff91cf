-- SOFT_GET(q): ARGV = queue, dead limit, deadline. Returns {key, value, count}, nil, or 'MORE'
-- after `limit` dead entries (see hard_get.lua); nothing is consumed, only dead entries at the
-- tail are removed.
local pending, limit = ARGV[1] .. ':queue', tonumber(ARGV[2])
if expired(ARGV[3]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
for _ = 1, limit do
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
return 'MORE'
