-- HARD_GET(q): ARGV = queue, retention, dead limit, deadline. Returns {key, value}; nil when
-- nothing is pending; 'MORE' after removing `limit` dead entries without reaching a live one:
-- the caller runs it again, and Redis serves other clients in between.
local q, retention, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if expired(ARGV[4]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local pending = q .. ':queue'
for _ = 1, limit do
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
return 'MORE'
