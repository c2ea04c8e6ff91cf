-- STATS page: ARGV = SSCAN cursor of QUEUESET ('0' to start), page size. Returns {next cursor,
-- name1, len1, status1, policy1, ...} for the members of one SSCAN page (absent status or
-- policy come back as ''); '0' as the next cursor ends the scan. One page at a time keeps
-- Redis free for others however many queues there are; a member may come twice.
local reply = {}
local page = redis.call('SSCAN', 'QUEUESET', ARGV[1], 'COUNT', tonumber(ARGV[2]))
reply[1] = page[1]
for _, q in ipairs(page[2]) do
  reply[#reply + 1] = q
  reply[#reply + 1] = redis.call('LLEN', q .. ':queue')
  reply[#reply + 1] = redis.call('GET', 'queuestat::' .. q) or ''
  reply[#reply + 1] = redis.call('GET', q .. ':queuepolicy') or ''
end
return reply
