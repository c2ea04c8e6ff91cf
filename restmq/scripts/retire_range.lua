-- RETIRE_RANGE(q). KEYS: <q>:UUID (only its name is used: the prefix of the value keys).
-- ARGV: first, last, retention, deadline. Retires <q>:<n> and <q>:<n>:refcount for
-- n = first..last: one step of retiring the values of a purged list (see purge.lua). Keys that
-- no longer exist or already expire sooner are left as they are.
local late = guard(ARGV[4]) if late then return late end
local first, last, retention = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for n = first, last do
  local key = value_key(KEYS[1], n)
  retire(key, retention)
  retire(refcount_of(key), retention)
end
return last - first + 1
