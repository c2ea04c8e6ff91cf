-- RETIRE_RANGE(q): ARGV = queue, first, last, retention, deadline. Retires <q>:<n> and
-- <q>:<n>:refcount for n = first..last: one step of retiring the values of a purged list (see
-- purge.lua). Keys that no longer exist or already expire sooner are left as they are.
local q, first, last, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if expired(ARGV[5]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
for n = first, last do
  local key = q .. ':' .. n
  retire(key, retention)
  retire(key .. ':refcount', retention)
end
return last - first + 1
