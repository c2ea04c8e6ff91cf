-- POP_BATCH(q): ARGV = queue, db, max messages, max bytes, dead limit, deadline.
-- Returns {policy, more, key1, value1, key2, value2, ...}; an empty reply when the queue is
-- not started. `more` is 1 when the batch stopped after `limit` dead entries (the caller may
-- pop again: more may be pending), else 0. Under broadcast the batch is published for every
-- process to write (the caller never writes it itself).
local q, db = ARGV[1], tonumber(ARGV[2])
local max_count, max_bytes, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if expired(ARGV[6]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
if redis.call('GET', 'queuestat::' .. q) ~= '1' then
  return {}
end
local policy = 'broadcast'
if redis.call('GET', q .. ':queuepolicy') == '2' then
  policy = 'roundrobin'
end
local pending = q .. ':queue'
local reply, messages, count, size, dead = {policy, 0}, {}, 0, 0, 0
while count < max_count and size < max_bytes do
  if dead >= limit then
    reply[2] = 1
    break
  end
  local key = redis.call('RPOP', pending)
  if not key then
    break
  end
  local value = redis.call('GET', key)
  redis.call('DEL', key, key .. ':refcount')
  if value then
    count = count + 1
    size = size + #value
    reply[#reply + 1] = key
    reply[#reply + 1] = value
    messages[count] = {key = key, value = value}
  else
    dead = dead + 1
  end
end
if count > 0 and policy == 'broadcast' then
  redis.call('PUBLISH', q .. ':PUBSUB',
             cjson.encode({type = 'batch', db = db, messages = messages}))
end
return reply
