-- reissue: ARGV = prefix, floor, then model names (the caller's configured models)
-- The store lost writes (a failover to a replica that lagged, a restart without persistence):
-- its epoch counter is below the floor, the highest epoch the calling replica saw. Its state
-- is still the truth, but it carries epochs older than the ones replicas hold, which they would
-- ignore as stale. So it is issued again at one new epoch above the floor: every breaker (its
-- state, wait and window kept; half-open permits of the lost history void), the active model of
-- every route, every pin and quota condition. A Change per breaker and a PinChange per pin are
-- published, so every replica adopts the store's state whatever it saw. Returns the Snapshot.

local now = now_ms()
local epoch = next_epoch()
for j = 3, #ARGV do
  redis.call('SADD', MODELS_KEY, ARGV[j])
end
local routes = load_routes()
local models = {}
for _, m in ipairs(redis.call('SMEMBERS', MODELS_KEY)) do
  models[m] = true
end
for _, chain in pairs(routes) do
  for _, m in ipairs(chain) do
    models[m] = true
  end
end

for route, chain in pairs(routes) do
  write_active(route, chain, epoch)
end
local breakers = {}
for model in pairs(models) do
  local b = load_breaker(model)
  b.epoch = epoch
  -- Permits handed out under the lost epochs can no longer be reported: hand them out again.
  b.probes_issued = b.probes_ok + b.probes_failed
  save_breaker(b)
  table.insert(breakers, b)
end
local flat = redis.call('HGETALL', PINS_KEY)
local pins = {}
for i = 1, #flat, 2 do
  local pin = cjson.decode(flat[i + 1])
  pin.epoch = epoch
  redis.call('HSET', PINS_KEY, flat[i], cjson.encode(pin))
  pins[flat[i]] = pin
end
for _, member in ipairs(redis.call('SMEMBERS', QUOTAS_KEY)) do
  local sep = string.find(member, '|', 1, true)
  local key = quota_key(string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'epoch', epoch)
  end
end

-- Published after everything is re-stamped, so each event shows the final active models.
for _, b in ipairs(breakers) do
  local calls, failures = window_view(b.model, now)
  local active = {}
  for route, chain in pairs(routes) do
    if chain_has(chain, b.model) then
      active[route] = cjson.decode(redis.call('HGET', ACTIVE_KEY, route))
    end
  end
  redis.call('PUBLISH', EVENTS_CHANNEL, cjson.encode({
    now_ms = now, breaker = breaker_json(b, calls, failures), active = active, changed = true,
  }))
end
for route, pin in pairs(pins) do
  local active = {}
  if routes[route] then
    active[route] = cjson.decode(redis.call('HGET', ACTIVE_KEY, route))
  end
  pin_change_json(now, route, pin, epoch, active, true, 'reissue')
end
return snapshot_json(now)
