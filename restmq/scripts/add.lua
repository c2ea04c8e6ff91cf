-- ADD(q, items[, idempotency key, fingerprint][, once window]): one or more messages, all or
-- nothing. KEYS: q's block (queue_keys), QUEUESET, DUESET. ARGV: queue name (the member of
-- QUEUESET), channel, db, deadline, once window (0: none), idempotency key ('' for none),
-- fingerprint, then 5 per item: value, ttl s, delay ms, eta ms (Unix), priority 0-9 ('' for
-- none of each).
-- Replies {'ok', due, key...}: due is in how many ms the earliest delayed item is due ('' when
-- none is delayed), the keys in item order; {'replayed', '', key...} for an idempotency key
-- already used by the same request (nothing written); {'reused'} when it was used by another
-- one; {'too_large', i} or {'bad_eta', i} for item i (from 0) refused, nothing written.
-- The queue's configuration gives items without their own a ttl and a delay, and bounds the
-- size of values. One item without delay or priority on a queue without configuration is
-- exactly the original add: INCR the counter, SET the value (EX its ttl), register the queue,
-- LPUSH its key, publish `wake`.
-- With a once window w > 0 (one item): when one of the w newest pending messages holds the
-- same value, its key is the reply and nothing is added: a retry whose first try timed out,
-- which either ran before its deadline or never will.
local now = now_ms()
local late = guard(ARGV[4], now) if late then return late end
local Q, G = queue_keys(1), global_keys(BLOCK + 1)
local q, channel, db, once = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local idem, fingerprint = ARGV[6], ARGV[7]
local MONTH = 2592000000  -- an eta at most 30 days ahead (ms)

local cfg = redis.call('HMGET', Q.config, 'ttl', 'delay', 'max_message', 'dedup_window')
local cfg_ttl, cfg_delay, max_message = tonumber(cfg[1]), tonumber(cfg[2]), tonumber(cfg[3])

local items = {}
for i = 8, #ARGV, 5 do
  local item = {value = ARGV[i], ttl = tonumber(ARGV[i + 1]), delay = tonumber(ARGV[i + 2]),
                eta = tonumber(ARGV[i + 3]), priority = tonumber(ARGV[i + 4]) or 0}
  local index = #items
  if max_message and #item.value > max_message then
    return {'too_large', index}
  end
  if item.eta and item.eta > now + MONTH then
    return {'bad_eta', index}
  end
  item.ttl = item.ttl or cfg_ttl
  if item.delay == nil and item.eta then
    item.delay = math.max(0, item.eta - now)
  end
  item.delay = item.delay or (cfg_delay or 0) * 1000
  items[index + 1] = item
end

if idem ~= '' then
  local seen = redis.call('HGET', Q.dedup, idem)
  if seen then
    local stored, listed = seen:match('^(%S+) (.*)$')
    if stored ~= fingerprint then
      return {'reused'}
    end
    count(Q, 'deduplicated', 1)
    -- The keys are listed joined by commas, and a queue's name may hold commas: each key is
    -- read as the queue's prefix and its digits, from where the previous one ended.
    local reply, prefix, at = {'replayed', ''}, value_key(Q.counter, ''), 1
    while at <= #listed do
      local digits = listed:sub(at, at + #prefix - 1) == prefix and
                     listed:match('^%d+', at + #prefix)
      if not digits then
        return redis.error_reply('ERR idempotency record of ' .. q .. ' unreadable: ' .. idem)
      end
      reply[#reply + 1] = value_key(Q.counter, digits)
      at = at + #prefix + #digits + 1
    end
    return reply
  end
elseif once > 0 and #items == 1 then
  for _, key in ipairs(redis.call('LRANGE', Q.pending, 0, once - 1)) do
    if redis.call('GET', key) == items[1].value then
      return {'ok', '', key}
    end
  end
end

-- Consecutive numbers; never a key that exists (a restored snapshot rolled the counter back).
local n_items = #items
local function claim_numbers()
  if n_items == 1 then
    return redis.call('INCR', Q.counter)
  end
  return redis.call('INCRBY', Q.counter, n_items)
end
local function any_taken(last)
  local names = {}
  for i = 1, n_items do
    names[i] = value_key(Q.counter, last - n_items + i)
  end
  return redis.call('EXISTS', unpack(names)) > 0
end
local last = claim_numbers()
while any_taken(last) do
  last = claim_numbers()
end

local reply, woken, earliest = {'ok', ''}, false, nil
for i, item in ipairs(items) do
  local key = value_key(Q.counter, last - n_items + i)
  reply[i + 2] = key
  if item.ttl and item.delay == 0 then
    redis.call('SET', key, item.value, 'EX', item.ttl)
  elseif item.ttl then
    redis.call('SET', key, item.value, 'PX', item.delay + 1000 * item.ttl)
  else
    redis.call('SET', key, item.value)
  end
end
register(G, Q, q)
local plain = {}  -- priority-0 keys due now, pushed together: one LPUSH keeps their order
for i, item in ipairs(items) do
  local key = value_key(Q.counter, last - n_items + i)
  if item.priority >= 1 then
    redis.call('HSET', Q.prio, key, item.priority)
  end
  if item.delay == 0 and item.priority < 1 then
    plain[#plain + 1] = key
    woken = true
  elseif item.delay == 0 then
    enqueue(Q, key, item.priority, last - n_items + i)
    woken = true
  else
    redis.call('ZADD', Q.delayed, now + item.delay, key)
    if not earliest or now + item.delay < earliest then
      earliest = now + item.delay
    end
  end
end
if #plain > 0 then
  redis.call('LPUSH', Q.pending, unpack(plain))
end
if woken then
  wake(channel, db)
end
if earliest then
  due(G, q, earliest)
  reply[2] = earliest - now
end
if idem ~= '' then
  local window = tonumber(cfg[4]) or 300
  redis.call('HSET', Q.dedup, idem, fingerprint .. ' ' .. table.concat(reply, ',', 3))
  redis.call('ZADD', Q.dedupexp, now + 1000 * window, idem)
  due(G, q, now + 1000 * window)
end
count(Q, 'added', n_items)
return reply
