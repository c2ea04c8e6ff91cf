-- TICK(q): what is due in queue q, at most `step` entries of each kind. KEYS: q's block
-- (queue_keys), QUEUESET, DUESET, then the block of q's dead-letter queue when the caller
-- names one. ARGV: the lease context (lease_context), deadline, the cursor of the clean-up
-- scan of q's delivery counts ('0' to start), step, scan count.
-- (1) Leases that ended: the message goes back next in line with its delivery count (the one
-- whose lease ended first is consumed first), or to the dead-letter queue after max_attempts
-- deliveries. (2) Delayed messages that are due become pending as if added now. (3) Both wake
-- the queue's consumers. (4) Idempotency keys past their window are forgotten. (5) A few
-- delivery counts of messages that no longer exist (consumed by other programs) are removed.
-- (6) q's entry in DUESET becomes its next due time, or goes.
-- Redis runs one script at a time, so however many processes tick, each ended lease is
-- handled once. Replies {now, next, head, cursor, requeued, promoted, dead_lettered}: q's next
-- due time ('' for none), the earliest due time of any queue ('' for none), the next cursor of
-- the scan; {'dead_letter', name} when the dead-letter queue is not the one whose keys were
-- given (nothing written).
local now = now_ms()
local late = guard(ARGV[7], now) if late then return late end
local Q, G, D = queue_keys(1), global_keys(BLOCK + 1), queue_keys(BLOCK + 3)
local ctx = lease_context()
local cursor, step, scan = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local max_attempts, wrong = check_dead_letter(Q, ctx)
if wrong then
  return wrong
end
local full = false  -- a step met its limit: more is due now

-- The entries of `set` due by now (at most `step`): the ZRANGEBYSCORE reply (member, score,
-- ...) and the positions of its members in due order: by score, then by message number, so
-- that the messages of one claim or one batch, which share a due time, keep their order.
-- Redis's order is by score, then by name: within one score, the names whose numbers have
-- one length are in number order already, so putting the shorter numbers first (a pass, no
-- sort) gives the due order; it is checked, and only names that are not plain numbers (not
-- ours) leave a sort to do.
local function due_in(set)
  local found = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'WITHSCORES', 'LIMIT', 0, step)
  if #found >= 2 * step then
    full = true
  end
  local score, number, digits = {}, {}, {}
  local function before(a, b)
    if score[a] ~= score[b] then
      return score[a] < score[b]
    end
    return number[a] < number[b]
  end
  local function in_order(list)
    for at = 2, #list do
      if before(list[at], list[at - 1]) then
        return false
      end
    end
    return true
  end
  local order = {}
  for i = 1, #found, 2 do
    order[#order + 1] = i
    score[i] = tonumber(found[i + 1])
    local n = number_of(found[i])
    number[i], digits[i] = tonumber(n) or 0, n and #n or 0
  end
  if in_order(order) then
    return found, order
  end
  -- Within each run of equal scores, the numbers of each length in Redis's order, shortest
  -- length first.
  local by_length, first = {}, 1
  while first <= #order do
    local last, shelves = first, {}
    while last < #order and score[order[last + 1]] == score[order[first]] do
      last = last + 1
    end
    for at = first, last do
      local shelf = shelves[digits[order[at]]] or {}
      shelves[digits[order[at]]] = shelf
      shelf[#shelf + 1] = order[at]
    end
    for length = 0, 15 do
      for _, i in ipairs(shelves[length] or {}) do
        by_length[#by_length + 1] = i
      end
    end
    first = last + 1
  end
  if not in_order(by_length) then
    table.sort(by_length, before)
  end
  return found, by_length
end

-- (1) ended leases
local ended, order = due_in(Q.inflight)
local kept, requeued, dead_lettered = {}, 0, 0
for pos, i in ipairs(order) do
  local key = ended[i]
  redis.call('ZREM', Q.inflight, key)
  local c = deliveries_of(Q, key)
  if redis.call('EXISTS', key) == 0 then
    forget(Q, key)
  elseif max_attempts > 0 and c >= max_attempts then
    dead_letter(Q, D, G, ctx, key, c, 'lease_expired', now)
    dead_lettered = dead_lettered + 1
  else
    redis.call('HSET', Q.deliveries, key, c)
    kept[pos] = true
  end
end
for pos = #order, 1, -1 do  -- the latest first, so the earliest ends up next in line
  if kept[pos] then
    requeue(Q, ended[order[pos]])
    requeued = requeued + 1
  end
end
if requeued > 0 then
  count(Q, 'redelivered', requeued)
end

-- (2) delayed messages that are due, in due order. What does not depend on one message is
-- done once for all of them: the removal (they are the set's first entries), the look at
-- their values (each one's only when some value is gone: deleted or expired before it was
-- due), at their priorities, the push of those of priority 0, and the numbers that place
-- the others at the end of their levels (one INCRBY of the counter).
local promoted = 0
local delayed, due_order = due_in(Q.delayed)
if #due_order > 0 then
  local members, levels, plain, ranked = {}, {}, {}, {}
  for n, i in ipairs(due_order) do
    members[n] = delayed[i]
  end
  redis.call('ZREMRANGEBYRANK', Q.delayed, 0, #members - 1)
  local all_live = redis.call('EXISTS', unpack(members)) == #members
  if redis.call('EXISTS', Q.prio) == 1 then
    levels = redis.call('HMGET', Q.prio, unpack(members))
  end
  for n, i in ipairs(due_order) do
    local key, p = delayed[i], tonumber(levels[n])
    if not all_live and redis.call('EXISTS', key) == 0 then
      forget(Q, key)
    elseif p and p >= 1 then
      ranked[#ranked + 1] = n
    else
      plain[#plain + 1] = key
    end
  end
  if #plain > 0 then
    redis.call('LPUSH', Q.pending, unpack(plain))  -- in due order, as one LPUSH each would
  end
  if #ranked > 0 then
    local first = redis.call('INCRBY', Q.counter, #ranked) - #ranked
    for j, n in ipairs(ranked) do
      enqueue(Q, delayed[due_order[n]], tonumber(levels[n]), first + j)
    end
  end
  promoted = #plain + #ranked
end

-- (3)
if requeued > 0 or promoted > 0 then
  wake(ctx.channel, ctx.db)
end
wake_dead_letter(ctx)

-- (4) idempotency keys past their window (hash fields, not keys)
local expired = due_in(Q.dedupexp)
for i = 1, #expired, 2 do
  redis.call('ZREM', Q.dedupexp, expired[i])
  redis.call('HDEL', Q.dedup, expired[i])
end

-- (5) delivery counts left behind
local scanned = redis.call('HSCAN', Q.deliveries, cursor, 'COUNT', scan)
local fields = scanned[2]
for i = 1, #fields, 2 do
  local n, key = number_of(fields[i]), nil
  if n then
    key = value_key(Q.counter, n)
  end
  if key ~= fields[i] or redis.call('EXISTS', key) == 0 then
    redis.call('HDEL', Q.deliveries, fields[i])
  end
end

-- (6)
local function first_score(set)
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  return tonumber(first[2])
end
local function earlier(a, b)
  if a and (not b or a < b) then
    return a
  end
  return b
end
local next_due = nil
if full then
  next_due = now
else
  next_due = earlier(first_score(Q.inflight),
                     earlier(first_score(Q.delayed), first_score(Q.dedupexp)))
  if not next_due and redis.call('EXISTS', Q.deliveries) == 1 then
    next_due = now + 60000  -- visit again to clean up
  end
end
if next_due then
  redis.call('ZADD', G.dueset, next_due, ctx.queue)
else
  redis.call('ZREM', G.dueset, ctx.queue)
end
local head = redis.call('ZRANGE', G.dueset, 0, 0, 'WITHSCORES')
return {now, next_due or '', head[2] or '', scanned[1], requeued, promoted, dead_lettered}
