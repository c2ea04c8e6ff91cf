-- The prelude: prepended to every script in restmq/scripts/ (see restmq/redis/scripts.py), so
-- the deadline guard, the skipping of dead entries and the retiring of values exist once.
--
-- Keys are declared. A script touches only the keys it is given in KEYS and the keys it
-- derives from them by these two rules; it never makes a key name from ARGV or from a literal:
-- * a value key <q>:<n> is an entry read from a declared list (RPOP, LINDEX, LRANGE of
--   <q>:queue), a key the caller declared (del, requeue), or value_key(counter, n), built from
--   the declared counter <q>:UUID: that name less `UUID` is the prefix `<q>:` of the queue's
--   value keys (so the queue's name is never needed to make a key);
-- * the read count of value key K is refcount_of(K), that is K:refcount.
-- KEYS holds the queue's own keys first, then the keys outside its prefix (QUEUESET,
-- queuestat::<q>), in the order each script's header states; restmq/redis/keys.py builds them
-- for the server and restmq-engine alike. The pub/sub channel <q>:PUBSUB is no key (no slot,
-- no key permission applies to it): scripts get its name in ARGV. tests/test_declared_keys.py
-- reads every script and holds them to these rules.

local function value_key(counter, n)
  if counter:sub(-4) ~= 'UUID' then
    error('value_key: ' .. counter .. ' is not a <q>:UUID counter')
  end
  return counter:sub(1, -5) .. n
end

local function refcount_of(key)
  return key .. ':refcount'
end

-- guard(deadline): nil when the script may go on; else the EXPIRED error it must answer at once,
-- before writing anything. `deadline` is in milliseconds of Redis's TIME since the epoch ('' for
-- none); when Redis runs the script after it, the caller has given up on the reply (a 503, or a
-- retry), so the write must not happen late behind its back. Every script that writes starts
--   local late = guard(ARGV[i]) if late then return late end
local function guard(deadline)
  deadline = tonumber(deadline)
  if not deadline then
    return nil
  end
  redis.replicate_commands()  -- Redis 5 needs it before writing after TIME
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > deadline then
    return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
  end
  return nil
end

-- next_live(pending, limit[, peek]): the oldest live entry of the pending list: its key and
-- value, popped (RPOP), or left in place with `peek` (LINDEX). A dead entry met on the way (its
-- value expired or was deleted) is removed with its read count, at most `limit` of them, so that
-- one script never holds Redis long. Returns key, value, and how many dead entries it removed;
-- without a live entry, key is nil and value is what the script answers: nil when the list ran
-- out, 'MORE' after `limit` dead entries (the caller runs it again, and Redis serves other
-- clients in between).
local function next_live(pending, limit, peek)
  for dead = 0, limit - 1 do
    local key
    if peek then
      key = redis.call('LINDEX', pending, -1)
    else
      key = redis.call('RPOP', pending)
    end
    if not key then
      return nil, nil, dead
    end
    local value = redis.call('GET', key)
    if value then
      return key, value, dead
    end
    if peek then
      redis.call('RPOP', pending)
    end
    redis.call('DEL', refcount_of(key))
  end
  return nil, 'MORE', limit
end

-- retire(k, retention): keep a consumed value readable for the retention period. A retention
-- of 0 deletes at once; a shorter remaining ttl is kept.
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

