-- DUE: which queues have something due (leases ending, delayed messages, idempotency keys to
-- forget, or a clean-up visit). KEYS: DUESET. ARGV: at most how many queues. Read-only.
-- Replies {now, head, queue1, queue2, ...}: Redis's time (ms), the earliest due time of any
-- queue ('' when none), and the queues due by now, earliest first.
local now = now_ms()
local reply = {now, ''}
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head > 0 then
  reply[2] = head[2]
end
for _, queue in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0,
                                  tonumber(ARGV[1]))) do
  reply[#reply + 1] = queue
end
return reply
