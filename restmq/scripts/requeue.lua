-- REQUEUE(q). KEYS: <q>:queue, then key1, key2, ... oldest first. ARGV: channel, db, deadline,
-- then value1, value2, ... (value i belongs to KEYS[i + 1]).
-- Puts back roundrobin messages that POP_BATCH removed but no live consumer could take: each
-- value is stored again and its key pushed at the tail, the oldest last, so they are the next
-- to be taken, in their original order. Wakes the consumers of every process. Returns the
-- number of messages put back. Safe to repeat: POP_BATCH deleted each value, so a value that
-- exists again was put back by an earlier attempt (whose reply we did not get), and is skipped.
local late = guard(ARGV[3]) if late then return late end
local pending, channel, db = KEYS[1], ARGV[1], ARGV[2]
local count = 0
for i = #KEYS, 2, -1 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SET', KEYS[i], ARGV[i + 2])
    redis.call('RPUSH', pending, KEYS[i])
    count = count + 1
  end
end
if count > 0 then
  redis.call('PUBLISH', channel, '{"type": "wake", "db": ' .. db .. '}')
end
return count
