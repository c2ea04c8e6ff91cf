-- Shared prelude (prepended to the scripts that retire keys, see restmq/redis/scripts.py).
-- Retire(k): keep a consumed value readable for the retention period.
-- A retention of 0 deletes at once; a shorter remaining ttl is kept.
local function retire(k, retention)
  if retention == 0 then
    redis.call('DEL', k)
    return
  end
  local ttl = redis.call('TTL', k)
  if ttl == -1 or ttl > retention then
    redis.call('EXPIRE', k, retention)
  end
end
