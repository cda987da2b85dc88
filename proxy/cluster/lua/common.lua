-- Shared by every breaker script; the store prepends it (with window.lua) to each script,
-- since Redis scripts cannot load one another. Everything is local: Redis forbids globals.
--
-- Calling convention: KEYS[1] = the epoch counter, ARGV[1] = the key prefix
-- ("gb:{<namespace>}:"), ARGV[2] = the epoch floor (the highest epoch the calling replica has
-- seen), ARGV[3] = the script's own arguments by name, one JSON object (ARGS below).
-- Every other name is built from the prefix; the hash tag in it keeps all of them in the
-- epoch key's slot, so the scripts also run on Redis Cluster (the declared key routes the call).

local PREFIX = ARGV[1]
local EPOCH_KEY = KEYS[1]
local EPOCH_FLOOR = tonumber(ARGV[2]) or 0
local ARGS = cjson.decode(ARGV[3] or '{}')
local MODELS_KEY = PREFIX .. 'models'
local ROUTES_KEY = PREFIX .. 'routes'
local DIGESTS_KEY = PREFIX .. 'route_digests'
local ACTIVE_KEY = PREFIX .. 'active'
local EVENTS_CHANNEL = PREFIX .. 'events'
local PINS_KEY = PREFIX .. 'pins'
local AUDIT_KEY = PREFIX .. 'audit'
local REPLICAS_KEY = PREFIX .. 'replicas'
-- The audit stream keeps about this many entries (XADD MAXLEN ~: trimmed by whole nodes).
local AUDIT_MAXLEN = 1000

local QUOTAS_KEY = PREFIX .. 'quotas'

local function quota_key(scope, model)
  return PREFIX .. 'quota:' .. scope .. ':' .. model
end

local function breaker_key(model)
  return PREFIX .. 'breaker:' .. model
end

local function window_key(model)
  return PREFIX .. 'window:' .. model
end

-- Set by view.lua (scripts without it take no epochs): re-stamps the whole state at an epoch.
local reissue_state = nil

-- After a failover that lost the last writes (or a restart without persistence) the epoch
-- counter is behind what the replicas saw: an epoch taken from it would be ignored by them as
-- stale, and so would the state the store kept, which carries older epochs still. So the
-- counter is raised to the floor and, in the same step, the store's whole state is issued
-- again at an epoch of its own (see reissue_state).
local function recover_epoch()
  if (tonumber(redis.call('GET', EPOCH_KEY)) or 0) >= EPOCH_FLOOR then
    return
  end
  redis.call('SET', EPOCH_KEY, EPOCH_FLOOR)
  if reissue_state then
    reissue_state(redis.call('INCR', EPOCH_KEY))
  end
end

-- The next epoch, above every epoch the caller has seen and above a re-stamp this script made:
-- a change sharing the re-stamp's epoch would be ordered against it by the scripts' clock
-- alone, and a replica could keep the re-stamped (older) state of the changed breaker.
local function next_epoch()
  recover_epoch()
  return redis.call('INCR', EPOCH_KEY)
end

-- Redis's clock, never a replica's: every replica then sees the same time.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ARGS.params: BreakerParams.script_params() (window_ms, bucket_ms, minimum_calls,
-- failure_rate, burst_failures, burst_ms, open_ms, open_max_ms, trip_memory_ms, probes,
-- probe_timeout_ms); durations are in milliseconds.

local BREAKER_FIELDS = {
  'state', 'epoch', 'since', 'open_until', 'trips', 'probes_issued', 'probes_ok',
  'probes_failed', 'last_permit', 'reason', 'forced_by',
}

-- A missing hash (or field) reads as a closed breaker at epoch 0 that has been closed forever.
local function load_breaker(model)
  local h = redis.call('HMGET', breaker_key(model), unpack(BREAKER_FIELDS))
  return {
    model = model,
    state = h[1] or 'closed',
    epoch = tonumber(h[2]) or 0,
    since = tonumber(h[3]) or 0,
    open_until = tonumber(h[4]) or 0,
    trips = tonumber(h[5]) or 0,
    probes_issued = tonumber(h[6]) or 0,
    probes_ok = tonumber(h[7]) or 0,
    probes_failed = tonumber(h[8]) or 0,
    last_permit = tonumber(h[9]) or 0,
    reason = h[10] or '',
    forced_by = h[11] or '',
  }
end

local function save_breaker(b)
  redis.call('HSET', breaker_key(b.model),
    'state', b.state, 'epoch', b.epoch, 'since', b.since, 'open_until', b.open_until,
    'trips', b.trips, 'probes_issued', b.probes_issued, 'probes_ok', b.probes_ok,
    'probes_failed', b.probes_failed, 'last_permit', b.last_permit, 'reason', b.reason,
    'forced_by', b.forced_by)
end

local function breaker_json(b, calls, failures)
  return {
    model = b.model, state = b.state, epoch = b.epoch, since_ms = b.since,
    open_until_ms = b.open_until, trips = b.trips, probes_issued = b.probes_issued,
    probes_ok = b.probes_ok, probes_failed = b.probes_failed, reason = b.reason,
    forced_by = b.forced_by, calls = calls, failures = failures,
  }
end

-- Every transition: a new epoch from the global counter, since = now, fresh window, cleared
-- operator marks. Probe counters restart unless the caller keeps them (a half-open breaker
-- reopening keeps them, so the open state shows how its probes went).
local function transition(b, state, now, keep_probes)
  b.state = state
  b.epoch = next_epoch()
  b.since = now
  b.open_until = 0
  b.reason = ''
  b.forced_by = ''
  if not keep_probes then
    b.probes_issued, b.probes_ok, b.probes_failed, b.last_permit = 0, 0, 0, 0
  end
  redis.call('DEL', window_key(b.model))
end

-- Open with the exponential wait of the given trip count: open * 2^(trips-1), capped.
local function open_breaker(b, p, now, trips, reason, keep_probes)
  transition(b, 'open', now, keep_probes)
  b.trips = trips
  b.open_until = now + math.floor(math.min(p.open_ms * 2 ^ (trips - 1), p.open_max_ms))
  b.reason = reason
end

-- Routes

local function load_routes()
  local flat = redis.call('HGETALL', ROUTES_KEY)
  local routes = {}
  for i = 1, #flat, 2 do
    routes[flat[i]] = cjson.decode(flat[i + 1])
  end
  return routes
end

local function chain_has(chain, model)
  for _, m in ipairs(chain) do
    if m == model then
      return true
    end
  end
  return false
end

local function admits(state)
  return state == 'closed' or state == 'disabled'
end

local function breaker_admits(model)
  local state = redis.call('HGET', breaker_key(model), 'state')
  return not state or admits(state)
end

-- Pins: route -> {model, until_ms, since_ms, by, reason, epoch}, held while until_ms (Redis
-- time) lies ahead. An expired pin is ignored here and removed by the snapshot script.
local function load_pin(route)
  local stored = redis.call('HGET', PINS_KEY, route)
  if not stored then
    return nil
  end
  return cjson.decode(stored)
end

local function live_pin(route, now)
  local pin = load_pin(route)
  if pin and tonumber(pin.until_ms) > now then
    return pin
  end
  return nil
end

-- The active model: the pinned model while a pin holds and its breaker admits (a pin picks
-- the model, the breaker still guards it: an open or forced-open pinned model is passed
-- over like any other); otherwise the first model of the chain whose breaker admits (no
-- hash = closed); JSON null when none does.
local function pick_active(route, chain)
  local pin = live_pin(route, now_ms())
  if pin and chain_has(chain, pin.model) and breaker_admits(pin.model) then
    return pin.model
  end
  for _, m in ipairs(chain) do
    if breaker_admits(m) then
      return m
    end
  end
  return cjson.null
end

-- Model names compare as strings; null (whose Lua form differs between Redis and fakeredis)
-- compares as false.
local function model_name(value)
  if type(value) == 'string' then
    return value
  end
  return false
end

local function stored_active(route, chain)
  local stored = redis.call('HGET', ACTIVE_KEY, route)
  if stored then
    return cjson.decode(stored)
  end
  return { model = pick_active(route, chain), epoch = 0 }
end

local function write_active(route, chain, epoch)
  local entry = { model = pick_active(route, chain), epoch = epoch }
  redis.call('HSET', ACTIVE_KEY, route, cjson.encode(entry))
  return entry
end

-- Active entries of every route whose chain contains the model; recomputed (and stored under
-- the new epoch) after a transition, read as stored otherwise.
local function routes_active(model, epoch, recompute)
  local result = {}
  for route, chain in pairs(load_routes()) do
    if chain_has(chain, model) then
      if recompute then
        result[route] = write_active(route, chain, epoch)
      else
        result[route] = stored_active(route, chain)
      end
    end
  end
  return result
end

-- Audit: one entry per operator action (and pin expiry), written by the script that acted,
-- so the entry and the transition are one atomic step. The stream ID is Redis's clock.
local function audit(now, action, target, by, reason, via, epoch, result)
  return redis.call('XADD', AUDIT_KEY, 'MAXLEN', '~', AUDIT_MAXLEN, '*',
    'at_ms', now, 'action', action, 'target', target, 'by', by, 'reason', reason,
    'via', via, 'epoch', epoch, 'result', cjson.encode(result))
end

-- Route -> active model name (or null), for audit results.
local function active_models(active)
  local models = {}
  for route, entry in pairs(active) do
    models[route] = entry.model
  end
  return models
end
