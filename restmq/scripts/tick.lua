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

-- The entries of `set` due by now: a ZRANGEBYSCORE reply (member, score, ...), the positions
-- of the entries to handle (at most `step`; the caller looks at no other) in due order, and
-- whether those are the set's first entries (else the caller removes them by name). Due order
-- is by score, then by message number, so that the messages of one claim or one batch, which
-- share a due time, keep their order. Redis's order is by score, then by name, and names
-- order numbers of one length only:
-- * within one score, putting the shorter numbers first (a pass, no sort) gives the due order;
--   it is checked, and only names that are not plain numbers (not ours) leave a sort to do;
-- * a step that would end inside one score's entries stops before them (the next step, at
--   once, starts with them); when they alone fill it, all of that score's entries are read, up
--   to GROUP_READ of them, and the lowest numbers handled. Beyond GROUP_READ the step keeps
--   Redis's order of names, so that one tick never reads more.
local GROUP_READ = 10 * step

local function in_due_order(entries)
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
  for i = 1, #entries, 2 do
    order[#order + 1] = i
    score[i] = tonumber(entries[i + 1])
    local n = number_of(entries[i])
    number[i], digits[i] = tonumber(n) or 0, n and #n or 0
  end
  if in_order(order) then
    return order
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
  return by_length
end

local function due_in(set)
  local found = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'WITHSCORES', 'LIMIT', 0, step)
  if #found < 2 * step then
    return found, in_due_order(found), true
  end
  full = true
  local last = found[#found]
  local cut = 0  -- the step's entries at the last score
  while cut < #found / 2 and found[#found - 2 * cut] == last do
    cut = cut + 1
  end
  local group = redis.call('ZCOUNT', set, last, last)
  if group == cut then  -- the step ends with its last score
    return found, in_due_order(found), true
  end
  if cut < #found / 2 then  -- earlier scores come first; the last one is for the next step
    for _ = 1, 2 * cut do
      found[#found] = nil
    end
    return found, in_due_order(found), true
  end
  if group > GROUP_READ then  -- the known exception
    return found, in_due_order(found), true
  end
  local all = redis.call('ZRANGEBYSCORE', set, last, last, 'WITHSCORES')
  local order = in_due_order(all)
  for at = #order, step + 1, -1 do
    order[at] = nil
  end
  return all, order, false
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
local delayed, due_order, first_entries = due_in(Q.delayed)
if #due_order > 0 then
  local members, levels, plain, ranked = {}, {}, {}, {}
  for n, i in ipairs(due_order) do
    members[n] = delayed[i]
  end
  if first_entries then
    redis.call('ZREMRANGEBYRANK', Q.delayed, 0, #members - 1)
  else
    redis.call('ZREM', Q.delayed, unpack(members))
  end
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
local expired, forgotten = due_in(Q.dedupexp)
for _, i in ipairs(forgotten) do
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
