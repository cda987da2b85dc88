-- register_routes: ARGS = {replica, digest, routes ({route: chain}), models (configured
-- models, those outside every chain too)}.
-- Stores the chains and this replica's digest, recomputes the active model of the given
-- routes (publishing a Change without breaker when one changed) and returns a Snapshot.

local replica, digest = ARGS.replica, ARGS.digest
local now = now_ms()

local given = ARGS.routes
for route, chain in pairs(given) do
  redis.call('HSET', ROUTES_KEY, route, cjson.encode(chain))
  for _, m in ipairs(chain) do
    redis.call('SADD', MODELS_KEY, m)
  end
end
for _, m in ipairs(ARGS.models) do
  redis.call('SADD', MODELS_KEY, m)
end
redis.call('HSET', DIGESTS_KEY, replica, digest)

local changes = {}
local epoch = nil
for route, chain in pairs(given) do
  local stored = redis.call('HGET', ACTIVE_KEY, route)
  local old = stored and model_name(cjson.decode(stored).model)
  if not stored or old ~= model_name(pick_active(route, chain)) then
    -- One new epoch for all routes this call moved, so mirrors can order it.
    epoch = epoch or next_epoch()
    changes[route] = write_active(route, chain, epoch)
  end
end
if epoch then
  redis.call('PUBLISH', EVENTS_CHANNEL, cjson.encode({
    kind = 'breaker', now_ms = now, breaker = cjson.null, active = changes, changed = true,
  }))
end
return snapshot_json(now)
