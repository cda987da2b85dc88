-- Answers: the JSON every script returns (and publishes when something changed).

-- The Change of one breaker; a transition recomputes the active model of its routes.
local function change_json(b, now, changed, calls, failures)
  local json = cjson.encode({
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

local function snapshot_json(now)
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
  })
end
