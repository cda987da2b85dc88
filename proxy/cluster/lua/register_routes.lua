-- register_routes: ARGV = prefix, floor, replica, digest, route count, (route, chain JSON)...,
-- then further model names (configured models outside every chain).
-- Stores the chains and this replica's digest, recomputes the active model of the given
-- routes (publishing a Change without breaker when one changed) and returns a Snapshot.

local replica = ARGV[3]
local digest = ARGV[4]
local count = tonumber(ARGV[5])
local now = now_ms()

local given = {}
local i = 6
for _ = 1, count do
  local route, chain_json = ARGV[i], ARGV[i + 1]
  redis.call('HSET', ROUTES_KEY, route, chain_json)
  given[route] = cjson.decode(chain_json)
  for _, m in ipairs(given[route]) do
    redis.call('SADD', MODELS_KEY, m)
  end
  i = i + 2
end
for j = i, #ARGV do
  redis.call('SADD', MODELS_KEY, ARGV[j])
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
