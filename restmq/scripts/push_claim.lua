-- PUSH_CLAIM(q, token): the messages a push dispatcher may send now, and the configuration it
-- sends them with (so no process keeps a copy that could be out of date). KEYS: those of
-- claim.lua (q's block, QUEUESET, DUESET, then the block of q's dead-letter queue when the
-- caller names one), then q's token bucket. ARGV: the lease context (lease_context),
-- deadline, token (16 hex digits), dead limit, the most messages the caller may start now
-- (its own attempts, post hooks included, stay within push_concurrency).
-- Takes k = min(room, whole tokens, 10, the caller's limit) messages, where room is push_concurrency less the
-- messages in flight (all processes' and pull consumers' alike) and the tokens are those of
-- the bucket: push_burst when it is new, else what was left plus push_rate per second since,
-- at most push_burst. A pause after a 429 or 503 left it below zero (push_pause.lua), so no
-- process takes anything until it has refilled. Each message is leased for push_timeout +
-- 5 s (2 * push_timeout + 5 s when a pre_hook is set). Replies {'not_push'} (no push_url),
-- {'stopped'} (status not exactly '1'), {'busy'} (no room), {'rate', ms until a whole
-- token}, or {'ok', now, lease ms, push_url, push_auth
-- or '', push_type or '', push_timeout, backoff_min, backoff_max, pre_hook or '', post_hook
-- or '', push_concurrency, key1, value1, c1, ...}; 'MORE' as claim.lua; {'dead_letter', name} as claim.lua.
local now = now_ms()
local late = guard(ARGV[7], now) if late then return late end
local Q, G, D = queue_keys(1), global_keys(BLOCK + 1), queue_keys(BLOCK + 3)
local bucket = KEYS[#KEYS]
local ctx = lease_context()
local token, dead_limit, mine = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]) or 10
local cfg = redis.call('HMGET', Q.config, 'push_url', 'push_auth', 'push_type', 'push_timeout',
                       'backoff_min', 'backoff_max', 'pre_hook', 'post_hook', 'push_rate',
                       'push_burst', 'push_concurrency')
if not cfg[1] then
  return {'not_push'}
end
if redis.call('GET', Q.status) ~= '1' then
  return {'stopped'}
end
local timeout = tonumber(cfg[4]) or 30
local rate, burst = tonumber(cfg[9]) or 10, tonumber(cfg[10]) or 10
local concurrency = tonumber(cfg[11]) or 10
local room = concurrency - redis.call('ZCARD', Q.inflight)
if room <= 0 then
  return {'busy'}
end
local stored = redis.call('HMGET', bucket, 'tokens', 'ts')
local tokens = burst
if stored[1] then
  local elapsed = math.max(0, now - (tonumber(stored[2]) or now))
  tokens = math.min(burst, (tonumber(stored[1]) or 0) + elapsed / 1000 * rate)
end
local wanted = math.min(room, math.floor(tokens), 10, mine)
if wanted <= 0 then
  return {'rate', math.max(1, math.ceil((1 - tokens) / rate * 1000))}
end
local max_attempts, wrong = check_dead_letter(Q, ctx)
if wrong then
  return wrong
end
-- The pre hook is called first, with the same timeout: the lease covers both calls, so an
-- attempt whose hook and target each answer in time is not handed to another meanwhile.
local lease = ((cfg[7] and 2 or 1) * timeout + 5) * 1000
local reply = {'ok', now, lease, cfg[1], cfg[2] or '', cfg[3] or '', timeout,
               cfg[5] or '1', cfg[6] or '300', cfg[7] or '', cfg[8] or '', concurrency}
local taken, more = take_leases(Q, D, G, ctx, now, wanted, lease, token, dead_limit, reply,
                                 max_attempts)
if more then
  return more
end
if taken > 0 then
  redis.call('HSET', bucket, 'tokens', tostring(tokens - taken), 'ts', now)
  count(Q, 'delivered_push', taken)
end
wake_dead_letter(ctx)
return reply
