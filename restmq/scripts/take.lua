-- TAKE(q): ARGV = queue, dead limit, deadline. Returns {key, value} (the message is deleted),
-- nil, or 'MORE' after `limit` dead entries (see hard_get.lua).
local pending, limit = ARGV[1] .. ':queue', tonumber(ARGV[2])
if expired(ARGV[3]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
for _ = 1, limit do
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
return 'MORE'
