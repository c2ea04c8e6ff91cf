-- PURGE(q). KEYS: q's block (queue_keys). ARGV: retention, channel, db, step, deadline.
-- Every message of the queue that a consumer could still get goes: pending (both levels),
-- leased and delayed. Those lists are removed and the purge published at once, in this
-- script, with what refers to their messages (priorities, delivery counts, origins); their
-- values are retired:
-- * here too, for at most `step` entries in all: returns {existed};
-- * else by the caller, in steps (retire_range.lua), when the keys are <q>:<n> numbered within
--   first..last (what adds produce: for the pending list, keys numbered in push order, near
--   the ends checked for a little disorder; the sorted sets are read whole; last within the
--   counter): returns {existed, first, last}. Doing the whole retiring here would hold Redis
--   for seconds on a list of a million entries.
-- `existed` says whether a pending list existed (1 or 0): the reply of the original purge.
local late = guard(ARGV[5]) if late then return late end
local Q = queue_keys(1)
local retention, channel, db, step = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local notice = '{"type": "purge", "db": ' .. db .. '}'

-- bounds(listed, range): widens range.low..range.high to the message numbers of the keys
-- `listed`; false when one of them is not <q>:<digits>.
local function bounds(listed, range)
  local prefix = value_key(Q.counter, '')
  for _, key in ipairs(listed) do
    local digits = key:sub(#prefix + 1)
    if key:sub(1, #prefix) ~= prefix or #digits > 15 or not digits:match('^%d+$') then
      return false
    end
    local n = tonumber(digits)
    if not range.low or n < range.low then range.low = n end
    if not range.high or n > range.high then range.high = n end
  end
  return true
end

local function remove_all()
  local existed = redis.call('UNLINK', Q.pending)
  redis.call('UNLINK', Q.priority, Q.inflight, Q.delayed, Q.prio, Q.deliveries, Q.origin)
  redis.call('PUBLISH', channel, notice)
  return existed
end

local entries = redis.call('LLEN', Q.pending) + redis.call('ZCARD', Q.priority) +
                redis.call('ZCARD', Q.inflight) + redis.call('ZCARD', Q.delayed)

if entries > step then
  local range = {}
  local ok = bounds(redis.call('LRANGE', Q.pending, -100, -1), range) and
             bounds(redis.call('LRANGE', Q.pending, 0, 99), range)
  ok = ok and bounds(redis.call('ZRANGE', Q.priority, 0, -1), range) and
       bounds(redis.call('ZRANGE', Q.inflight, 0, -1), range) and
       bounds(redis.call('ZRANGE', Q.delayed, 0, -1), range)
  local newest = tonumber(redis.call('GET', Q.counter))
  if ok and range.low and newest and range.high <= newest then
    return {remove_all(), range.low, range.high}  -- UNLINK frees them in the background
  end
end
local function retire_all(listed)
  for _, key in ipairs(listed) do
    retire(key, retention)
    retire(refcount_of(key), retention)
  end
end
retire_all(redis.call('LRANGE', Q.pending, 0, -1))
retire_all(redis.call('ZRANGE', Q.priority, 0, -1))
retire_all(redis.call('ZRANGE', Q.inflight, 0, -1))
retire_all(redis.call('ZRANGE', Q.delayed, 0, -1))
return {remove_all()}
