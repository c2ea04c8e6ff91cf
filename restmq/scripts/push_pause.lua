-- PUSH_PAUSE(q, p): the target answered 429 or 503: no process pushes from q for p seconds.
-- KEYS: q's configuration, q's token bucket. ARGV: deadline, p (seconds, a decimal).
-- The bucket goes to -push_rate * p tokens, counted from now: it takes p seconds to refill to
-- zero, and PUSH_CLAIM takes nothing before it holds a whole token. Replies 1.
local now = now_ms()
local late = guard(ARGV[1], now) if late then return late end
local rate = tonumber(redis.call('HGET', KEYS[1], 'push_rate')) or 10
redis.call('HSET', KEYS[2], 'tokens', tostring(-rate * tonumber(ARGV[2])), 'ts', now)
return 1
