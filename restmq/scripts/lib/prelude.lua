-- The prelude: prepended to every script in restmq/scripts/ (see restmq/redis/scripts.py), so
-- the deadline guard, the order of consumption (priorities, then the pending list), the
-- skipping of dead entries, retiring, and the moves of leases and dead letters exist once.
--
-- Keys are declared. A script touches only the keys it is given in KEYS and the keys it
-- derives from them by these two rules; it never makes a key name from ARGV or from a literal:
-- * a value key <q>:<n> is an entry read from a declared list or sorted set (RPOP, LINDEX,
--   LRANGE of <q>:queue; ZPOPMIN, ZRANGE, ZRANGEBYSCORE of <q>:priority, <q>:inflight,
--   <q>:delayed), a key the caller declared (del, requeue), or value_key(counter, n), built
--   from the declared counter <q>:UUID: that name less `UUID` is the prefix `<q>:` of the
--   queue's value keys (so the queue's name is never needed to make a key). A key that arrives
--   as data (a receipt, a hash field, a dead letter's origin) is rebuilt by value_key from its
--   number, so it can only ever name a value key of the declared queue;
-- * the read count of value key K is refcount_of(K), that is K:refcount.
-- Most scripts get a queue's whole block of keys (queue_keys below; restmq/redis/keys.py
-- builds it), then the keys outside its prefix (QUEUESET, DUESET), then, for a script that
-- moves messages to a second queue, that queue's block. The pub/sub channel <q>:PUBSUB is no
-- key (no slot, no key permission applies to it): scripts get its name in ARGV.
-- tests/test_declared_keys.py reads every script and holds them to these rules.

local prefixes = {}  -- counter -> the prefix of its queue's value keys, once checked
local function value_key(counter, n)
  local prefix = prefixes[counter]
  if not prefix then
    if counter:sub(-4) ~= 'UUID' then
      error('value_key: ' .. counter .. ' is not a <q>:UUID counter')
    end
    prefix = counter:sub(1, -5)
    prefixes[counter] = prefix
  end
  return prefix .. n
end

local function refcount_of(key)
  return key .. ':refcount'
end

-- The digits n of value key <q>:<n> (up to 15 of them), as text, or nil.
local function number_of(name)
  local digits = name:match(':(%d+)$')
  if digits and #digits <= 15 then
    return digits
  end
  return nil
end

-- A queue's keys, KEYS[i] to KEYS[i + BLOCK - 1], in the order restmq/redis/keys.py's
-- queue_block gives them.
local BLOCK = 14
local function queue_keys(i)
  return {pending = KEYS[i], priority = KEYS[i + 1], prio = KEYS[i + 2], inflight = KEYS[i + 3],
          deliveries = KEYS[i + 4], delayed = KEYS[i + 5], config = KEYS[i + 6],
          counter = KEYS[i + 7], dedup = KEYS[i + 8], dedupexp = KEYS[i + 9],
          origin = KEYS[i + 10], status = KEYS[i + 11], policy = KEYS[i + 12],
          counters = KEYS[i + 13]}
end

-- The keys outside every queue's prefix, after the first block.
local function global_keys(i)
  return {queueset = KEYS[i], dueset = KEYS[i + 1]}
end

-- Redis's clock in milliseconds since the epoch: the only clock due times and leases use, so
-- that processes on hosts whose clocks disagree still agree on them.
local function now_ms()
  redis.replicate_commands()  -- Redis 5 needs it before writing after TIME
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- guard(deadline[, now]): nil when the script may go on; else the EXPIRED error it must answer
-- at once, before writing anything. `deadline` is in milliseconds of Redis's TIME since the
-- epoch ('' for none); when Redis runs the script after it, the caller has given up on the
-- reply (a 503, or a retry), so the write must not happen late behind its back. Every script
-- that writes starts
--   local late = guard(ARGV[i]) if late then return late end
local function guard(deadline, now)
  deadline = tonumber(deadline)
  if not deadline then
    return nil
  end
  if (now or now_ms()) > deadline then
    return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
  end
  return nil
end

-- count(Q, counter, n): add n to the counter named `counter` of the queue whose block is Q,
-- on a server run with --counters (restmq/redis/scripts.py turns COUNTING on in the text of
-- the scripts it loads for it). Otherwise nothing is written: a database used only through
-- the original operations keeps exactly the original keyspace. A dispatcher's outcome is
-- counted with count(Q, 'push_' .. outcome, 1).
local COUNTING = false
local function count(Q, counter, n)
  if COUNTING and n > 0 then
    redis.call('HINCRBY', Q.counters, counter, n)
  end
end

local function wake(channel, db)
  redis.call('PUBLISH', channel, '{"type": "wake", "db": ' .. db .. '}')
end

-- due(G, name, t): queue `name` has something due at `t` (ms) or later: the tick visits it
-- then (a due time only ever moves earlier here; the tick itself sets the exact next one).
local function due(G, name, t)
  redis.call('ZADD', G.dueset, 'LT', t, name)
end

-- register(G, Q, name): the queue exists (an add): listed, and started unless it has a status.
local function register(G, Q, name)
  redis.call('SADD', G.queueset, name)
  redis.call('SETNX', Q.status, '1')
end

-- forget(Q, key): the message left the queue for good; nothing refers to it any more.
local function forget(Q, key)
  redis.call('HDEL', Q.deliveries, key)
  redis.call('HDEL', Q.prio, key)
  redis.call('HDEL', Q.origin, key)
end

-- forget_all(Q, keys): forget for each of `keys` (a list of value keys), one command per hash.
-- Few messages have a priority or an origin: a look at whether those hashes exist at all
-- spares handing each of them the whole list.
local function forget_all(Q, keys)
  redis.call('HDEL', Q.deliveries, unpack(keys))
  if redis.call('EXISTS', Q.prio) == 1 then
    redis.call('HDEL', Q.prio, unpack(keys))
  end
  if redis.call('EXISTS', Q.origin) == 1 then
    redis.call('HDEL', Q.origin, unpack(keys))
  end
end

-- retire(k, retention[, text]): keep a consumed value readable for the retention period. A
-- retention of 0 deletes at once; a shorter remaining ttl is kept (by Redis 7 itself: EXPIRE's
-- LT sets a ttl only where it shortens one, a key without a ttl counting as infinite). `text`:
-- the retention as text, made once by a caller that retires many (a number argument of
-- redis.call is formatted anew at each call).
local EXPIRE_LT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000
local function retire(k, retention, text)
  if retention == 0 then
    redis.call('DEL', k)
    return
  end
  if EXPIRE_LT then
    redis.call('EXPIRE', k, text or retention, 'LT')
    return
  end
  local ttl = redis.call('TTL', k)
  if ttl == -1 or ttl > retention then
    redis.call('EXPIRE', k, retention)
  end
end

-- The sorted-set score of a pending message of priority p (1 to 9) placed by number n: ZPOPMIN
-- takes the highest priority first, and the lowest number first within one level.
local PRIORITY_STEP = 1099511627776  -- 2^40
local function priority_score(p, n)
  return (9 - p) * PRIORITY_STEP + n
end

-- enqueue(Q, key, p, n): the message becomes pending as if added now (an add, a delayed message
-- that became due): at the producing end of its level, level 0 by LPUSH, a higher one by n, a
-- number of the queue's counter taken now (the key's own for an add). A message that becomes
-- due then joins its level behind everything pending before; its key's number, older than
-- those, would put it ahead of them. A number burnt this way just names no message.
local function enqueue(Q, key, p, n)
  if p and p >= 1 then
    redis.call('ZADD', Q.priority, priority_score(p, n), key)
  else
    redis.call('LPUSH', Q.pending, key)
  end
end

-- requeue(Q, key): the message goes back to the consuming end, next in line (a release, an
-- expired lease), as level 0's RPUSH does. A priority message was the first of its level when
-- it was taken, and every score given since is a newer number than its key's, so its key's
-- number puts it first again.
local function requeue(Q, key)
  local p = tonumber(redis.call('HGET', Q.prio, key))
  if p and p >= 1 then
    redis.call('ZADD', Q.priority, priority_score(p, tonumber(number_of(key)) or 0), key)
  else
    redis.call('RPUSH', Q.pending, key)
  end
end

-- next_live(Q, limit[, peek[, flat]]): the next message to consume, priority levels first
-- (highest first), then the pending list (oldest first): its key and value, taken off
-- (ZPOPMIN, RPOP), or left in place with `peek`. `flat`: the caller knows that no priority
-- level holds anything (it looked once for many messages), so only the list is read. A dead
-- entry met on the way (its value expired or was deleted) is removed with its read count and
-- what refers to it, at most `limit` of them, so that one script never holds Redis long.
-- Returns key, value, how many dead entries it removed, and the message's priority (0 to 9);
-- without a live entry, key is nil and value is what the script answers: nil when nothing is
-- pending, 'MORE' after `limit` dead entries (the caller runs it again, and Redis serves other
-- clients in between).
local function next_live(Q, limit, peek, flat)
  for dead = 0, limit - 1 do
    local key, top, level
    if peek then
      top = redis.call('ZRANGE', Q.priority, 0, 0, 'WITHSCORES')
    elseif not flat then
      top = redis.call('ZPOPMIN', Q.priority)
    end
    if top and #top > 0 then
      key, level = top[1], 9 - math.floor(tonumber(top[2]) / PRIORITY_STEP)
      if peek then
        local value = redis.call('GET', key)
        if value then
          return key, value, dead, level
        end
        redis.call('ZREM', Q.priority, key)
      end
    else
      if peek then
        key = redis.call('LINDEX', Q.pending, -1)
      else
        key = redis.call('RPOP', Q.pending)
      end
      if not key then
        return nil, nil, dead
      end
      if peek then
        local value = redis.call('GET', key)
        if value then
          return key, value, dead, 0
        end
        redis.call('RPOP', Q.pending)
      end
    end
    if not peek then
      local value = redis.call('GET', key)
      if value then
        return key, value, dead, level or 0
      end
    end
    redis.call('DEL', refcount_of(key))
    forget(Q, key)
  end
  return nil, 'MORE', limit
end

-- deliveries_of(Q, key): how many times the message was delivered under a lease (the leading
-- integer of its deliveries field, 'c' or 'c.t'), 0 when never.
local function deliveries_of(Q, key)
  local field = redis.call('HGET', Q.deliveries, key)
  return tonumber(field and field:match('^(%d+)') or 0)
end

-- receipt_parts(receipt): of a receipt <n>.<c>.<t>, the digits n and the deliveries field
-- 'c.t' its message has while it is current; nil when it does not parse. (An ack parses a
-- hundred at a time: two captures, and the token's length told by where its dot is.)
local function receipt_parts(receipt)
  local n, field = receipt:match('^(%d+)%.(%d+%.[0-9a-f]+)$')
  if not n or #n > 15 or field:find('.', 1, true) ~= #field - 16 then
    return nil
  end
  return n, field
end

-- leased(Q, receipt): the value key and delivery count a receipt <n>.<c>.<t> names when it is
-- current: the message's deliveries field is exactly 'c.t' (it is leased, under this very
-- delivery). Else nil: a receipt that does not parse, of a message acked or gone, or of an
-- earlier delivery (its lease expired and the message was delivered again).
local function leased(Q, receipt)
  local n, field = receipt_parts(receipt)
  if not n then
    return nil
  end
  local key = value_key(Q.counter, n)
  if redis.call('HGET', Q.deliveries, key) ~= field then
    return nil
  end
  return key, tonumber(field:sub(1, -18))
end

-- The script's context for moves between queues: ctx = {queue, channel, db, retention,
-- dead_letter (its name, '' for none), dead_channel}, from ARGV[1] to ARGV[6] of every lease
-- script, whose dead-letter queue's block D follows the globals in KEYS.
local function lease_context()
  return {queue = ARGV[1], channel = ARGV[2], db = ARGV[3], retention = tonumber(ARGV[4]),
          dead_letter = ARGV[5], dead_channel = ARGV[6]}
end

-- The configured dead-letter queue, when dead-lettering may happen (max_attempts > 0), must
-- be the one whose keys the caller declared. Returns max_attempts, and the reply to answer at
-- once (before any write) when the caller guessed wrong: {'dead_letter', configured name}.
local function check_dead_letter(Q, ctx)
  local cfg = redis.call('HMGET', Q.config, 'max_attempts', 'dead_letter')
  local m = tonumber(cfg[1]) or 0
  local configured = cfg[2] or ''
  if m > 0 and configured ~= ctx.dead_letter then
    return m, {'dead_letter', configured}
  end
  return m, nil
end

-- dead_letter(Q, D, G, ctx, key, c, reason, now): move the message `key` (delivered c times)
-- to the end of the dead-letter queue's pending list as a new message, remembering where it
-- came from; without a dead-letter queue (refused by the configuration, so only when the
-- record was written by hand) the message is retired. Returns true when it was moved.
local function dead_letter(Q, D, G, ctx, key, c, reason, now)
  if ctx.dead_letter == '' then
    retire(key, ctx.retention)
    retire(refcount_of(key), ctx.retention)
    forget(Q, key)
    count(Q, 'dropped', 1)
    return false
  end
  local value = redis.call('GET', key)
  local pttl = redis.call('PTTL', key)
  local letter = value_key(D.counter, redis.call('INCR', D.counter))
  while redis.call('EXISTS', letter) == 1 do  -- a restored snapshot rolled the counter back
    letter = value_key(D.counter, redis.call('INCR', D.counter))
  end
  if pttl > 0 then
    redis.call('SET', letter, value, 'PX', pttl)
  else
    local ttl = tonumber(redis.call('HGET', D.config, 'ttl'))
    if ttl then
      redis.call('SET', letter, value, 'EX', ttl)
    else
      redis.call('SET', letter, value)
    end
  end
  register(G, D, ctx.dead_letter)
  redis.call('LPUSH', D.pending, letter)
  redis.call('HSET', D.origin, letter, cjson.encode({queue = ctx.queue, key = key,
                                                    deliveries = c, reason = reason, at = now}))
  ctx.moved = true  -- wake_dead_letter publishes one wake for all of a script's moves
  redis.call('DEL', key, refcount_of(key))
  forget(Q, key)
  count(Q, 'dead_lettered', 1)
  count(D, 'added', 1)
  return true
end

-- wake_dead_letter(ctx): wake the dead-letter queue's consumers once if anything moved there.
local function wake_dead_letter(ctx)
  if ctx.moved then
    wake(ctx.dead_channel, ctx.db)
  end
end

-- take_leases(Q, D, G, ctx, now, limit, lease, token, dead_limit, reply, max_attempts): lease
-- up to `limit` messages in consumption order for `lease` ms under `token` (CLAIM's loop,
-- shared with the push claim): each gets delivery count c, one more than before, and its
-- deliveries field 'c.token'; one already delivered `max_attempts` times (the setting was
-- lowered meanwhile; 0: no limit) is dead-lettered instead. Appends key, value, c of each to
-- `reply`. Returns how many were taken, and 'MORE' when none was and `dead_limit` dead entries
-- were removed on the way.
local function take_leases(Q, D, G, ctx, now, limit, lease, token, dead_limit, reply,
                           max_attempts)
  -- Nothing below adds to the priority levels: one look tells whether they need reading at
  -- all. The leases enter the in-flight set and the delivery counts their hash together, at
  -- the end.
  local flat = redis.call('EXISTS', Q.priority) == 0
  local taken, dead, leases, fields = 0, 0, {}, {}
  local counted = {}  -- key -> its count, once taken here (a key listed twice is taken twice)
  local score = tostring(now + lease)  -- made text once, not at each ZADD argument
  local dot_token = '.' .. token

  -- take(key, value, field): the message `key`, whose deliveries field was `field`.
  local function take(key, value, field)
    local c = (counted[key] or tonumber(field and field:match('^(%d+)') or 0)) + 1
    if max_attempts > 0 and c > max_attempts then
      dead_letter(Q, D, G, ctx, key, c - 1, 'max_attempts', now)
      return
    end
    counted[key] = c
    fields[#fields + 1] = key
    fields[#fields + 1] = c .. dot_token
    leases[#leases + 1] = score
    leases[#leases + 1] = key
    taken = taken + 1
    reply[#reply + 1] = key
    reply[#reply + 1] = value
    reply[#reply + 1] = c
  end

  if flat then
    -- Only the pending list: its keys, values and counts a batch at a time, a few commands
    -- for the whole claim rather than four a message. A dead entry (its value gone) is
    -- forgotten.
    while taken < limit and dead < dead_limit do
      local popped = redis.call('RPOP', Q.pending, limit - taken)
      if not popped then
        break
      end
      local batch = {}
      for i, key in ipairs(popped) do
        batch[i] = key
      end
      local values = redis.call('MGET', unpack(batch))
      local counts = redis.call('HMGET', Q.deliveries, unpack(batch))
      local gone, refcounts = {}, {}
      for i, key in ipairs(popped) do
        if values[i] then
          take(key, values[i], counts[i])
        else
          gone[#gone + 1] = key
          refcounts[#refcounts + 1] = refcount_of(key)
        end
      end
      if #gone > 0 then
        dead = dead + #gone
        redis.call('DEL', unpack(refcounts))
        forget_all(Q, gone)
      end
    end
    if taken == 0 and dead >= dead_limit then
      return 0, 'MORE'
    end
  else
    while taken < limit do
      local key, value, skipped = next_live(Q, dead_limit - dead)
      dead = dead + skipped
      if not key then
        if value and taken == 0 then
          return 0, value  -- 'MORE'
        end
        break
      end
      take(key, value, redis.call('HGET', Q.deliveries, key))
    end
  end
  if #fields > 0 then
    redis.call('HSET', Q.deliveries, unpack(fields))
  end
  if taken > 0 then
    redis.call('ZADD', Q.inflight, unpack(leases))
    due(G, ctx.queue, now + lease)
  end
  return taken, nil
end
