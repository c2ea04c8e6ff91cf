-- TAKE(q). KEYS: q's block (queue_keys). ARGV: dead limit, deadline. Returns {key, value} (the
-- message is deleted), nil, or 'MORE' after `limit` dead entries (see next_live in the
-- prelude).
local late = guard(ARGV[2]) if late then return late end
local Q = queue_keys(1)
local key, value = next_live(Q, tonumber(ARGV[1]))
if not key then
  return value
end
redis.call('DEL', key, refcount_of(key))
forget(Q, key)
count(Q, 'read_take', 1)
return {key, value}
