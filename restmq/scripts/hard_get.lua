-- HARD_GET(q). KEYS: q's block (queue_keys). ARGV: retention, dead limit, deadline. Returns
-- {key, value}; nil when nothing is pending; 'MORE' after removing `limit` dead entries
-- without reaching a live one (see next_live in the prelude). Priority messages come first.
local late = guard(ARGV[3]) if late then return late end
local Q, retention = queue_keys(1), tonumber(ARGV[1])
local key, value = next_live(Q, tonumber(ARGV[2]))
if not key then
  return value
end
retire(key, retention)
retire(refcount_of(key), retention)
forget(Q, key)
count(Q, 'read_get', 1)
return {key, value}
