-- RELEASE(q, receipts, delay): the consumer gives the messages back (a nack). KEYS: q's block
-- (queue_keys), QUEUESET, DUESET, then the block of q's dead-letter queue when the caller
-- names one. ARGV: the lease context (lease_context), deadline, delay ms, the reason a message
-- dead-lettered here is recorded with ('released' for a consumer, 'push_failed' for a push
-- dispatcher; anything else counts as 'released'), then the receipts.
-- A current receipt's message keeps its delivery count and goes back next in line (with a
-- delay: to the delayed set, due then); messages released together keep their order, the first
-- receipt's next; after max_attempts deliveries it is dead-lettered
-- instead. Replies {now, result1, result2, ...}, one per receipt: 'released', 'dead_lettered' or
-- 'stale' (see leased in the prelude); {'dead_letter', name} when the dead-letter queue is not
-- the one whose keys were given (nothing written).
local now = now_ms()
local late = guard(ARGV[7], now) if late then return late end
local Q, G, D = queue_keys(1), global_keys(BLOCK + 1), queue_keys(BLOCK + 3)
local ctx = lease_context()
local delay = tonumber(ARGV[8])
local reason = ARGV[9] == 'push_failed' and 'push_failed' or 'released'
local max_attempts, wrong = check_dead_letter(Q, ctx)
if wrong then
  return wrong
end
local reply = {now}
for i = 10, #ARGV do
  local key, c = leased(Q, ARGV[i])
  if not key then
    reply[#reply + 1] = 'stale'
  else
    redis.call('ZREM', Q.inflight, key)
    redis.call('HSET', Q.deliveries, key, c)
    if max_attempts > 0 and c >= max_attempts then
      dead_letter(Q, D, G, ctx, key, c, reason, now)
      reply[#reply + 1] = 'dead_lettered'
    else
      if delay > 0 then
        redis.call('ZADD', Q.delayed, now + delay, key)
        due(G, ctx.queue, now + delay)
      end
      reply[#reply + 1] = 'released'
    end
  end
end
-- Each requeue goes in front of the line, so the last one given is the first one out: the
-- released messages go back last to first (their receipts parsed, as leased just did).
local requeued = false
if delay == 0 then
  for i = #ARGV, 10, -1 do
    if reply[i - 8] == 'released' then
      requeue(Q, value_key(Q.counter, ARGV[i]:match('^(%d+)%.')))
      requeued = true
    end
  end
end
if requeued then
  wake(ctx.channel, ctx.db)
end
wake_dead_letter(ctx)
return reply
