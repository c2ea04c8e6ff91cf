-- STATS of one page of queues (the server reads the page of QUEUESET with SSCAN first).
-- KEYS: for each queue, <q>:queue, <q>:queuepolicy, queuestat::<q>. ARGV: none.
-- Returns {len1, status1, policy1, len2, ...}; an absent status or policy comes back as ''.
local reply = {}
for i = 1, #KEYS, 3 do
  reply[#reply + 1] = redis.call('LLEN', KEYS[i])
  reply[#reply + 1] = redis.call('GET', KEYS[i + 2]) or ''
  reply[#reply + 1] = redis.call('GET', KEYS[i + 1]) or ''
end
return reply
