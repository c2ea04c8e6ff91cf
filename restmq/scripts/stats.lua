-- STATS of one page of queues (the server reads the page of QUEUESET with SSCAN first).
-- KEYS: for each queue, <q>:queue, <q>:priority, <q>:queuepolicy, queuestat::<q>. ARGV: none.
-- Returns {len1, status1, policy1, len2, ...}; an absent status or policy comes back as ''.
-- A queue's length counts its pending messages of every priority.
local reply = {}
for i = 1, #KEYS, 4 do
  reply[#reply + 1] = redis.call('LLEN', KEYS[i]) + redis.call('ZCARD', KEYS[i + 1])
  reply[#reply + 1] = redis.call('GET', KEYS[i + 3]) or ''
  reply[#reply + 1] = redis.call('GET', KEYS[i + 2]) or ''
end
return reply
