-- CONFIG_SET(q, set, unset): change a queue's configuration. KEYS: q's block (queue_keys),
-- then PUSHSET (the queue is a member while it has a push_url).
-- ARGV: deadline, 'clear' (delete the whole record) or '', the number of attributes set, then
-- name and value of each (checked one by one by the caller), then the names to remove.
-- The changes are merged with the stored record and the result checked as a whole before
-- anything is written: max_attempts > 0 needs a dead_letter queue, backoff_min may not exceed
-- backoff_max (defaults 1 and 300 s; the fault is the first of the two this call changes).
-- It does not register the queue. Replies {'ok', name1, value1, ...} (the record now stored), {'invalid', name} (the
-- attribute at fault; nothing written), or {'deleted', 0|1} for 'clear'.
local late = guard(ARGV[1]) if late then return late end
local Q = queue_keys(1)
local pushset = KEYS[BLOCK + 1]
local name = Q.counter:sub(1, -6)  -- <q>:UUID less ':UUID': the queue, a PUSHSET member
if ARGV[2] == 'clear' then
  redis.call('SREM', pushset, name)
  return {'deleted', redis.call('DEL', Q.config)}
end
local n_set = tonumber(ARGV[3])
local record = {}
local stored = redis.call('HGETALL', Q.config)
for i = 1, #stored, 2 do
  record[stored[i]] = stored[i + 1]
end
local set, unset = {}, {}
for i = 4, 3 + 2 * n_set, 2 do
  record[ARGV[i]] = ARGV[i + 1]
  set[#set + 1] = ARGV[i]
  set[#set + 1] = ARGV[i + 1]
end
for i = 4 + 2 * n_set, #ARGV do
  record[ARGV[i]] = nil
  unset[#unset + 1] = ARGV[i]
end
if (tonumber(record.max_attempts) or 0) > 0 and not record.dead_letter then
  return {'invalid', 'max_attempts'}
end
local changed = {}
for i = 4, 3 + 2 * n_set, 2 do
  changed[ARGV[i]] = true
end
for i = 4 + 2 * n_set, #ARGV do
  changed[ARGV[i]] = true
end
if (tonumber(record.backoff_min) or 1) > (tonumber(record.backoff_max) or 300) then
  return {'invalid', (changed.backoff_min or not changed.backoff_max) and 'backoff_min'
                     or 'backoff_max'}
end
if #set > 0 then
  redis.call('HSET', Q.config, unpack(set))
end
if #unset > 0 then
  redis.call('HDEL', Q.config, unpack(unset))
end
if record.push_url then
  redis.call('SADD', pushset, name)
else
  redis.call('SREM', pushset, name)
end
local reply = {'ok'}
for name, value in pairs(record) do
  reply[#reply + 1] = name
  reply[#reply + 1] = value
end
return reply
