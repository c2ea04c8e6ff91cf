-- SOFT_GET(q). KEYS: q's block (queue_keys). ARGV: dead limit, deadline. Returns {key, value,
-- count}, nil, or 'MORE' after `limit` dead entries (see next_live in the prelude); nothing is
-- consumed, only dead entries at the consuming end are removed.
local late = guard(ARGV[2]) if late then return late end
local Q = queue_keys(1)
local key, value = next_live(Q, tonumber(ARGV[1]), true)
if not key then
  return value
end
local refcount = refcount_of(key)
local reads = redis.call('INCR', refcount)
local pttl = redis.call('PTTL', key)
if pttl > 0 then
  redis.call('PEXPIRE', refcount, pttl)
end
count(Q, 'read_soft_get', 1)
return {key, value, reads}
