-- TAKE(q). KEYS: <q>:queue. ARGV: dead limit, deadline. Returns {key, value} (the message is
-- deleted), nil, or 'MORE' after `limit` dead entries (see next_live in the prelude).
local late = guard(ARGV[2]) if late then return late end
local key, value = next_live(KEYS[1], tonumber(ARGV[1]))
if not key then
  return value
end
redis.call('DEL', key, refcount_of(key))
return {key, value}
