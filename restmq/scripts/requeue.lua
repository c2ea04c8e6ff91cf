-- REQUEUE(q). KEYS: q's block (queue_keys), then key1, key2, ... oldest first. ARGV: channel,
-- db, deadline, then value1, priority1, value2, priority2, ... (pair i belongs to key i).
-- Puts back roundrobin messages that POP_BATCH removed but no live consumer could take: each
-- value is stored again and its key goes back to the consuming end of its level, the oldest
-- last, so they are the next to be taken, in their original order: a priority message to
-- <q>:priority with its score (and its level in <q>:prio), a priority-0 one to the tail of the
-- pending list. Wakes the consumers of every process. Returns the number of messages put back.
-- Safe to repeat: POP_BATCH deleted each value, so a value that exists again was put back by
-- an earlier attempt (whose reply we did not get), and is skipped.
local late = guard(ARGV[3]) if late then return late end
local Q, channel, db = queue_keys(1), ARGV[1], ARGV[2]
local count = 0
for i = #KEYS - BLOCK, 1, -1 do
  local key = KEYS[BLOCK + i]
  if redis.call('EXISTS', key) == 0 then
    local p = tonumber(ARGV[3 + 2 * i])
    redis.call('SET', key, ARGV[2 + 2 * i])
    if p and p >= 1 then
      redis.call('HSET', Q.prio, key, p)
    end
    requeue(Q, key)
    count = count + 1
  end
end
if count > 0 then
  wake(channel, db)
end
return count
