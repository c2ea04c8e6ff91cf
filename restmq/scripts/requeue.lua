-- REQUEUE(q): ARGV = queue, db, deadline, then key1, value1, key2, value2, ... oldest first.
-- Puts back roundrobin messages that POP_BATCH removed but no live consumer could take: each
-- value is stored again and its key pushed at the tail, the oldest last, so they are the next
-- to be taken, in their original order. Wakes the consumers of every process. Returns the
-- number of messages put back. Safe to repeat: POP_BATCH deleted each value, so a value that
-- exists again was put back by an earlier attempt (whose reply we did not get), and is skipped.
local q, db = ARGV[1], ARGV[2]
if expired(ARGV[3]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
local pending = q .. ':queue'
local count = 0
for i = #ARGV - 1, 4, -2 do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    redis.call('SET', ARGV[i], ARGV[i + 1])
    redis.call('RPUSH', pending, ARGV[i])
    count = count + 1
  end
end
if count > 0 then
  redis.call('PUBLISH', q .. ':PUBSUB', '{"type": "wake", "db": ' .. db .. '}')
end
return count
