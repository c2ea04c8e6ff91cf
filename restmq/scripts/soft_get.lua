-- SOFT_GET(q). KEYS: <q>:queue. ARGV: dead limit, deadline. Returns {key, value, count}, nil, or
-- 'MORE' after `limit` dead entries (see next_live in the prelude); nothing is consumed, only
-- dead entries at the tail are removed.
local late = guard(ARGV[2]) if late then return late end
local key, value = next_live(KEYS[1], tonumber(ARGV[1]), true)
if not key then
  return value
end
local refcount = refcount_of(key)
local count = redis.call('INCR', refcount)
local pttl = redis.call('PTTL', key)
if pttl > 0 then
  redis.call('PEXPIRE', refcount, pttl)
end
return {key, value, count}
