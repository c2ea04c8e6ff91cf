-- PEEK(q, after, limit, max bytes, budget, before): pending messages in the order consumers
-- would get them, without touching anything (read-only: no dead entry is removed, no read is
-- counted). KEYS: q's block (queue_keys). ARGV: the key to continue after ('' for the start),
-- limit, max bytes, budget, how many messages earlier steps of the same peek returned.
-- The priority levels come first (by rank in <q>:priority: highest level, oldest first), then
-- the pending list from its tail (the oldest) to its head. Dead entries (the value expired or
-- was deleted) are skipped. The page ends after `limit` messages, or before a message that
-- would take the values past `max bytes` (never before the peek's first message), or after
-- `budget` entries were examined, so that one script never holds Redis long.
-- Replies {state, cursor, key1, value1, priority1, ...}: state 'end' when nothing pending
-- follows the last message, 'more' when a message follows it, 'budget' when the budget ran
-- out first (cursor: the last entry examined, where the next step goes on); {'bad_after'} when
-- `after` is neither in <q>:priority nor in <q>:queue.
local Q = queue_keys(1)
local after, limit, max_bytes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local budget, before = tonumber(ARGV[4]), tonumber(ARGV[5])
local WINDOW = 100  -- entries read at once

-- Where to start: a rank in <q>:priority, or an offset from the tail of <q>:queue.
local in_priority, position = true, 0
if after ~= '' then
  local rank = redis.call('ZRANK', Q.priority, after)
  if rank then
    position = rank + 1
  else
    local index = redis.call('LPOS', Q.pending, after, 'RANK', -1)  -- searched from the tail
    if not index then
      return {'bad_after'}
    end
    in_priority, position = false, redis.call('LLEN', Q.pending) - index
  end
end

local reply, taken, size, examined = {'end', ''}, 0, 0, 0

-- visit(key, level): one entry, in order; true once the page is complete.
local function visit(key, level)
  examined = examined + 1
  reply[2] = key
  local value = redis.call('GET', key)
  if not value then
    return false
  end
  if taken == limit or (taken + before > 0 and size + #value > max_bytes) then
    reply[1] = 'more'
    return true
  end
  taken, size = taken + 1, size + #value
  reply[#reply + 1] = key
  reply[#reply + 1] = value
  reply[#reply + 1] = level
  return false
end

while true do
  local room = budget - examined
  if room <= 0 then
    reply[1] = 'budget'
    break
  end
  local w, done = math.min(WINDOW, room, limit - taken + 1), false
  if in_priority then
    local found = redis.call('ZRANGE', Q.priority, position, position + w - 1, 'WITHSCORES')
    if #found == 0 then
      in_priority, position = false, 0
    end
    position = position + #found / 2
    for i = 1, #found, 2 do
      if visit(found[i], 9 - math.floor(tonumber(found[i + 1]) / PRIORITY_STEP)) then
        done = true
        break
      end
    end
  else
    local found = redis.call('LRANGE', Q.pending, -(position + w), -(position + 1))
    if #found == 0 then
      break
    end
    position = position + #found
    for i = #found, 1, -1 do
      if visit(found[i], 0) then
        done = true
        break
      end
    end
  end
  if done then
    break
  end
end
if reply[1] ~= 'budget' then
  reply[2] = ''
end
return reply
