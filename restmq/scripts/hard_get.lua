-- HARD_GET(q). KEYS: <q>:queue. ARGV: retention, dead limit, deadline. Returns {key, value}; nil
-- when nothing is pending; 'MORE' after removing `limit` dead entries without reaching a live
-- one (see next_live in the prelude).
local late = guard(ARGV[3]) if late then return late end
local retention = tonumber(ARGV[1])
local key, value = next_live(KEYS[1], tonumber(ARGV[2]))
if not key then
  return value
end
retire(key, retention)
retire(refcount_of(key), retention)
return {key, value}
