-- INFO(q): a consistent picture of a queue. KEYS: q's block (queue_keys), QUEUESET, DUESET,
-- then the block of q's dead-letter queue when the caller names one. ARGV: queue name, the
-- dead-letter queue the caller believes in ('' for none), q's pub/sub channel. Read-only.
-- Replies {'ok', pending, inflight, delayed, status, policy, dead-letter queue, its pending
-- count, next due, pending of priority 1, ..., of priority 9, the key counter (messages ever
-- numbered in q; '' when none was), the connections subscribed to the channel, then, when
-- counting, the counters' fields and values}
-- ('' for an absent status, policy, dead-letter queue or due
-- time); {'dead_letter', name} when the dead-letter queue is
-- not the one whose keys were given.
local Q, G, D = queue_keys(1), global_keys(BLOCK + 1), queue_keys(BLOCK + 3)
local q, believed, channel = ARGV[1], ARGV[2], ARGV[3]
local dead = redis.call('HGET', Q.config, 'dead_letter') or ''
if dead ~= believed then
  return {'dead_letter', dead}
end
local function pending_of(K)
  return redis.call('LLEN', K.pending) + redis.call('ZCARD', K.priority)
end
local dead_pending = 0
if dead ~= '' then
  dead_pending = pending_of(D)
end
local reply = {'ok', pending_of(Q), redis.call('ZCARD', Q.inflight),
               redis.call('ZCARD', Q.delayed), redis.call('GET', Q.status) or '',
               redis.call('GET', Q.policy) or '', dead, dead_pending,
               redis.call('ZSCORE', G.dueset, q) or ''}
for p = 1, 9 do
  reply[#reply + 1] = redis.call('ZCOUNT', Q.priority, (9 - p) * PRIORITY_STEP,
                                 '(' .. string.format('%d', (10 - p) * PRIORITY_STEP))
end
reply[#reply + 1] = redis.call('GET', Q.counter) or ''
-- Each RestMQ process holds one subscription while it has a live consumer, a waiter or a push
-- dispatcher of q: the one figure of the whole fleet's listeners that Redis knows already.
reply[#reply + 1] = redis.call('PUBSUB', 'NUMSUB', channel)[2]
if COUNTING then
  for _, part in ipairs(redis.call('HGETALL', Q.counters)) do
    reply[#reply + 1] = part
  end
end
return reply
