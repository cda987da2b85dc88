-- Time-based sliding window: a ring of `slots` buckets of `bucket_ms` each, in one hash.
--   head               index (now // bucket_ms) of the newest bucket written
--   bucket_ms, slots   the geometry it was built with (a new geometry starts a fresh window)
--   calls, failures    running totals over the live buckets
--   s<i>               slot i = '<bucket index>:<calls>:<failures>', for bucket index % slots = i
-- A bucket is live while its index > current index - slots. Advancing the head evicts, one
-- slot per elapsed bucket, what fell out and subtracts it from the totals: O(1) amortised.

local function slot_read(wkey, index, slots)
  local value = redis.call('HGET', wkey, 's' .. (index % slots))
  if not value then
    return nil, 0, 0
  end
  local b, c, f = string.match(value, '^(-?%d+):(%d+):(%d+)$')
  return tonumber(b), tonumber(c), tonumber(f)
end

-- Totals as of `now`, without writing (for answers that do not report).
local function window_view(model, now)
  local wkey = window_key(model)
  local w = redis.call('HMGET', wkey, 'head', 'bucket_ms', 'slots', 'calls', 'failures')
  local head = tonumber(w[1])
  if not head then
    return 0, 0
  end
  local slots = tonumber(w[3])
  local calls, failures = tonumber(w[4]), tonumber(w[5])
  -- A clock that stepped back counts as no time passing.
  local cur = math.max(math.floor(now / tonumber(w[2])), head)
  if cur - head >= slots then
    return 0, 0
  end
  for index = head + 1, cur do
    local b, c, f = slot_read(wkey, index, slots)
    if b and b <= cur - slots then
      calls, failures = calls - c, failures - f
    end
  end
  return calls, failures
end

-- Move the window to `now`, evicting what fell out; returns its handle for the calls below.
local function window_advance(model, now, p)
  local wkey = window_key(model)
  local slots = math.ceil(p.window_ms / p.bucket_ms)
  local w = redis.call('HMGET', wkey, 'head', 'bucket_ms', 'slots', 'calls', 'failures')
  local head = tonumber(w[1])
  local cur = math.floor(now / p.bucket_ms)
  if not head or tonumber(w[2]) ~= p.bucket_ms or tonumber(w[3]) ~= slots
      or cur - head >= slots then
    -- Empty, reconfigured, or idle for a whole window: nothing in it is live any more.
    redis.call('DEL', wkey)
    redis.call('HSET', wkey, 'head', cur, 'bucket_ms', p.bucket_ms, 'slots', slots,
      'calls', 0, 'failures', 0)
    return { key = wkey, slots = slots, cur = cur, calls = 0, failures = 0, fresh = true,
      empty_slot = true }
  end
  local calls, failures = tonumber(w[4]), tonumber(w[5])
  local moved = cur > head
  if moved then
    for index = head + 1, cur do
      local b, c, f = slot_read(wkey, index, slots)
      if b then
        calls, failures = calls - c, failures - f
        -- The current bucket's slot is overwritten by window_add; no need to delete it.
        if index ~= cur then
          redis.call('HDEL', wkey, 's' .. (index % slots))
        end
      end
    end
  else
    cur = head
  end
  -- The new head and totals are written with the bucket by window_add, in one command.
  return { key = wkey, slots = slots, cur = cur, calls = calls, failures = failures,
    empty_slot = moved, moved = moved }
end

-- Add to the current bucket (its slot is known empty right after the head moved, so it is
-- not read) and write the totals and head.
local function window_add(win, calls, failures)
  local c, f = 0, 0
  if not win.empty_slot then
    local b, sc, sf = slot_read(win.key, win.cur, win.slots)
    if b == win.cur then
      c, f = sc, sf
    end
  end
  win.calls, win.failures = win.calls + calls, win.failures + failures
  redis.call('HSET', win.key,
    's' .. (win.cur % win.slots), win.cur .. ':' .. (c + calls) .. ':' .. (f + failures),
    'head', win.cur, 'calls', win.calls, 'failures', win.failures)
end

-- Calls and failures in the newest buckets covering burst_ms (at least one, at most all).
local function window_burst(win, p)
  local span = math.min(win.slots, math.max(1, math.ceil(p.burst_ms / p.bucket_ms)))
  local calls, failures = 0, 0
  for index = win.cur - span + 1, win.cur do
    local b, c, f = slot_read(win.key, index, win.slots)
    if b == index then
      calls, failures = calls + c, failures + f
    end
  end
  return calls, failures
end
