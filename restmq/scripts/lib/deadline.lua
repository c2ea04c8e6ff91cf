-- Shared prelude: `expired(deadline)` is true when Redis runs the script after `deadline`
-- (milliseconds since the epoch, '' for none). The caller has given up on a reply by then
-- (a 503, or a retry), so the write must not happen late behind its back. Every script that
-- writes takes a deadline and answers an EXPIRED error without writing when it is late.
local function expired(deadline)
  deadline = tonumber(deadline)
  if not deadline then
    return false
  end
  redis.replicate_commands()  -- Redis 5 needs it before writing after TIME
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > deadline
end
