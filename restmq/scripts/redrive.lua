-- REDRIVE(d, target, limit): move dead letters of queue d, oldest first, back to where they
-- came from (or to one given queue). KEYS: d's block (queue_keys), QUEUESET, DUESET, then the
-- target queue's block. ARGV: d's name, the target's name, the target's channel, db, deadline,
-- '1' when the target was given (else each message goes to its origin), limit, dead limit.
-- Each message moved becomes pending at the target's producing end with a delivery count of 0:
-- under its original key when it returns to its origin queue and that key is free, else a new
-- one; it keeps its remaining ttl. It stops, leaving the message in place, at a message whose
-- origin is unknown ('no origin'; only with no target given) or another queue than the target
-- ('target': run it again with that queue's keys).
-- Replies {stop, argument, remaining, from1, to1, from2, to2, ...}: stop is '' (limit reached
-- or nothing left), 'no origin', 'target' (argument: the origin queue's name) or 'more' (after
-- `dead limit` dead entries); remaining is the length of d's pending list after the moves.
local late = guard(ARGV[5]) if late then return late end
local D, G, T = queue_keys(1), global_keys(BLOCK + 1), queue_keys(BLOCK + 3)
local target, channel, db, given = ARGV[2], ARGV[3], ARGV[4], ARGV[6] == '1'
local limit, dead_limit = tonumber(ARGV[7]), tonumber(ARGV[8])

-- Where message `key` came from: the origin record, or nil when missing or unreadable.
local function origin_of(key)
  local record = redis.call('HGET', D.origin, key)
  if not record then
    return nil
  end
  local ok, o = pcall(cjson.decode, record)
  if ok and type(o) == 'table' and type(o.queue) == 'string' then
    return o
  end
  return nil
end

-- The key a message gets at the target: its original one when it returns to its origin and
-- that key (a value key of the target) is free, else a new one.
local function new_key(o)
  if o and o.queue == target and type(o.key) == 'string' then
    local n = number_of(o.key)
    if n then  -- the same digits: '07' is not message 7
      local original = value_key(T.counter, n)
      if original == o.key and redis.call('EXISTS', original) == 0 then
        return original
      end
    end
  end
  local key = value_key(T.counter, redis.call('INCR', T.counter))
  while redis.call('EXISTS', key) == 1 do
    key = value_key(T.counter, redis.call('INCR', T.counter))
  end
  -- A new key is a message added to the target, as a dead letter is to its dead-letter
  -- queue; one back under its original key was counted when first added.
  count(T, 'added', 1)
  return key
end

local reply, stop, argument, moved, dead = {}, '', '', 0, 0
while moved < limit do
  local from = redis.call('LINDEX', D.pending, -1)
  if not from then
    break
  end
  local value = redis.call('GET', from)
  if not value then
    redis.call('RPOP', D.pending)
    redis.call('DEL', refcount_of(from))
    forget(D, from)
    dead = dead + 1
    if dead >= dead_limit then
      stop = 'more'
      break
    end
  else
    local o = origin_of(from)
    local destination = target
    if not given then
      destination = o and o.queue
    end
    if not destination then
      stop = 'no origin'
      break
    end
    if destination ~= target then
      stop, argument = 'target', destination
      break
    end
    redis.call('RPOP', D.pending)
    local key = new_key(o)
    local pttl = redis.call('PTTL', from)
    if pttl > 0 then
      redis.call('SET', key, value, 'PX', pttl)
    else
      redis.call('SET', key, value)
    end
    register(G, T, target)
    redis.call('LPUSH', T.pending, key)
    forget(T, key)
    redis.call('DEL', from, refcount_of(from))
    forget(D, from)
    moved = moved + 1
    reply[#reply + 1] = from
    reply[#reply + 1] = key
  end
end
if moved > 0 then
  wake(channel, db)
end
local head = {stop, argument, redis.call('LLEN', D.pending)}
for i, v in ipairs(reply) do
  head[#head + 1] = v
end
return head
