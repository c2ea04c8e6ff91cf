-- PURGE(q). KEYS: <q>:queue, <q>:UUID. ARGV: retention, channel, db, step, deadline.
-- The pending list is removed and the purge published at once, in this script; its values are
-- retired:
-- * here too, for a list of at most `step` entries: returns {existed};
-- * else by the caller, in steps (retire_range.lua), when the pending keys are <q>:<n> numbered
--   within first..last (what adds produce: keys numbered in push order, near the ends checked
--   for a little disorder, last within the counter): returns {1, first, last}. Doing the whole
--   retiring here would hold Redis for seconds on a list of a million entries.
local late = guard(ARGV[5]) if late then return late end
local pending, counter = KEYS[1], KEYS[2]
local retention, channel, db, step = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local notice = '{"type": "purge", "db": ' .. db .. '}'

-- The lowest and highest message numbers among `keys`, nil if one is not <q>:<digits>.
local function bounds(keys, low, high)
  local prefix = value_key(counter, '')
  for _, key in ipairs(keys) do
    local digits = key:sub(#prefix + 1)
    if key:sub(1, #prefix) ~= prefix or #digits > 15 or not digits:match('^%d+$') then
      return nil
    end
    local n = tonumber(digits)
    if not low or n < low then low = n end
    if not high or n > high then high = n end
  end
  return low, high
end

if redis.call('LLEN', pending) > step then
  local first, last = bounds(redis.call('LRANGE', pending, -100, -1))
  if first then
    first, last = bounds(redis.call('LRANGE', pending, 0, 99), first, last)
  end
  local newest = tonumber(redis.call('GET', counter))
  if first and newest and last <= newest then
    redis.call('UNLINK', pending)  -- freed in the background: O(1) here
    redis.call('PUBLISH', channel, notice)
    return {1, first, last}
  end
end
local keys = redis.call('LRANGE', pending, 0, -1)
local existed = redis.call('DEL', pending)
for _, key in ipairs(keys) do
  retire(key, retention)
  retire(refcount_of(key), retention)
end
redis.call('PUBLISH', channel, notice)
return {existed}
