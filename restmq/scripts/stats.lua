-- STATS: every registered queue with its pending count, status and policy,
-- in one round trip. Returns {name1, len1, status1, policy1, ...}; absent
-- status or policy come back as ''.
local reply = {}
for _, q in ipairs(redis.call('SMEMBERS', 'QUEUESET')) do
  reply[#reply + 1] = q
  reply[#reply + 1] = redis.call('LLEN', q .. ':queue')
  reply[#reply + 1] = redis.call('GET', 'queuestat::' .. q) or ''
  reply[#reply + 1] = redis.call('GET', q .. ':queuepolicy') or ''
end
return reply
