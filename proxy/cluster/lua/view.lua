-- Answers: the JSON every script returns (and publishes when something changed).

-- The Change of one breaker; a transition recomputes the active model of its routes.
local function change_json(b, now, changed, calls, failures)
  local json = cjson.encode({
    kind = 'breaker',
    now_ms = now,
    breaker = breaker_json(b, calls, failures),
    active = routes_active(b.model, b.epoch, changed),
    changed = changed,
  })
  if changed then
    redis.call('PUBLISH', EVENTS_CHANNEL, json)
  end
  return json
end

-- The Change of a breaker whose window stays as it is.
local function unchanged_json(b, now)
  local calls, failures = window_view(b.model, now)
  return change_json(b, now, false, calls, failures)
end

-- The answer (and event) of a pin, unpin or pin expiry: the route's pin after it (null when
-- none), the epoch it happened at, and the route's active model.
local function pin_change_json(now, route, pin, epoch, active, changed, action)
  local json = cjson.encode({
    kind = 'pin', now_ms = now, route = route, pin = pin or cjson.null, epoch = epoch,
    active = active, changed = changed, action = action,
  })
  if changed then
    redis.call('PUBLISH', EVENTS_CHANNEL, json)
  end
  return json
end

-- Remove the pins whose time is up: each removal is a transition (new epoch, the route's
-- active model recomputed, published) and is audited.
-- Drop a route's pin: a new epoch, and the route's active model recomputed under it.
local function drop_pin(route)
  redis.call('HDEL', PINS_KEY, route)
  local epoch = next_epoch()
  local active = {}
  local chain = redis.call('HGET', ROUTES_KEY, route)
  if chain then
    active[route] = write_active(route, cjson.decode(chain), epoch)
  end
  return epoch, active
end

local function expire_pins(now)
  local flat = redis.call('HGETALL', PINS_KEY)
  for i = 1, #flat, 2 do
    local route, pin = flat[i], cjson.decode(flat[i + 1])
    if tonumber(pin.until_ms) <= now then
      local epoch, active = drop_pin(route)
      pin_change_json(now, route, nil, epoch, active, true, 'expire')
      audit(now, 'pin_expired', route, 'gemini-breaker',
        'pin of ' .. pin.model .. ' by ' .. pin.by .. ' ran out: ' .. pin.reason, '', epoch,
        { unpinned = pin.model, active = active_models(active) })
    end
  end
end

-- Pins that still hold, by route.
local function live_pins(now)
  local pins = {}
  local flat = redis.call('HGETALL', PINS_KEY)
  for i = 1, #flat, 2 do
    local pin = cjson.decode(flat[i + 1])
    if tonumber(pin.until_ms) > now then
      pins[flat[i]] = pin
    end
  end
  return pins
end

-- Every model a script has seen or a route names, as a set.
local function known_models(routes)
  local models = {}
  for _, m in ipairs(redis.call('SMEMBERS', MODELS_KEY)) do
    models[m] = true
  end
  for _, chain in pairs(routes) do
    for _, m in ipairs(chain) do
      models[m] = true
    end
  end
  return models
end

local function snapshot_json(now)
  local routes = load_routes()
  local models = known_models(routes)
  local breakers = {}
  for m in pairs(models) do
    breakers[m] = breaker_json(load_breaker(m), window_view(m, now))
  end
  local active = {}
  for route, chain in pairs(routes) do
    active[route] = stored_active(route, chain)
  end
  local digests = {}
  local flat = redis.call('HGETALL', DIGESTS_KEY)
  for i = 1, #flat, 2 do
    digests[flat[i]] = flat[i + 1]
  end
  return cjson.encode({
    now_ms = now,
    epoch = tonumber(redis.call('GET', EPOCH_KEY)) or 0,
    breakers = breakers,
    active = active,
    routes = routes,
    digests = digests,
    pins = live_pins(now),
  })
end

-- The store lost writes (see recover_epoch): issue its whole state again at `epoch`, so replicas
-- holding newer epochs from the lost history adopt it. Every breaker (state, wait and window
-- kept; permits handed out under the lost epochs void, so they are handed out again), the
-- active model of every route, every pin and quota condition get the new epoch; a Change per
-- breaker and a PinChange per pin are published. The calling script then goes on with its
-- own change at the next epoch, published after these.
reissue_state = function(epoch)
  local now = now_ms()
  local routes = load_routes()
  local models = known_models(routes)
  for route, chain in pairs(routes) do
    write_active(route, chain, epoch)
  end
  local function active_of(model)
    local active = {}
    for route, chain in pairs(routes) do
      if chain_has(chain, model) then
        active[route] = cjson.decode(redis.call('HGET', ACTIVE_KEY, route))
      end
    end
    return active
  end
  local flat = redis.call('HGETALL', PINS_KEY)
  for i = 1, #flat, 2 do
    local route, pin = flat[i], cjson.decode(flat[i + 1])
    pin.epoch = epoch
    redis.call('HSET', PINS_KEY, route, cjson.encode(pin))
    local active = {}
    if routes[route] then
      active[route] = cjson.decode(redis.call('HGET', ACTIVE_KEY, route))
    end
    pin_change_json(now, route, pin, epoch, active, true, 'reissue')
  end
  for _, member in ipairs(redis.call('SMEMBERS', QUOTAS_KEY)) do
    local sep = string.find(member, '|', 1, true)
    local key = quota_key(string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, 'epoch', epoch)
    end
  end
  for model in pairs(models) do
    local b = load_breaker(model)
    b.epoch = epoch
    b.probes_issued = b.probes_ok + b.probes_failed
    save_breaker(b)
    local calls, failures = window_view(model, now)
    redis.call('PUBLISH', EVENTS_CHANNEL, cjson.encode({
      kind = 'breaker', now_ms = now, breaker = breaker_json(b, calls, failures),
      active = active_of(model),
      changed = true,
    }))
  end
end
