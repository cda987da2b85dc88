-- seed: ARGS = {snapshot (a Snapshot)}. Loads a known state into a store (the in-process
-- one a replica falls back to while Redis is unreachable). Breakers, active models, routes, pins and
-- digests are written as given; windows start empty; the epoch counter never goes back.
-- Nothing is published: no transition happens. Returns the resulting Snapshot.

local snap = ARGS.snapshot
local now = now_ms()
-- The counter must stay above every epoch written here, or a later transition could reuse one.
local highest = math.max(tonumber(redis.call('GET', EPOCH_KEY)) or 0, snap.epoch)

for model, s in pairs(snap.breakers) do
  local b = load_breaker(model)
  b.state, b.epoch, b.since, b.open_until = s.state, s.epoch, s.since_ms, s.open_until_ms
  b.trips, b.reason, b.forced_by = s.trips, s.reason, s.forced_by
  b.probes_issued, b.probes_ok, b.probes_failed = s.probes_issued, s.probes_ok, s.probes_failed
  -- When the permits went out is not part of a snapshot: count their timeout from now.
  b.last_permit = now
  save_breaker(b)
  redis.call('DEL', window_key(model))
  redis.call('SADD', MODELS_KEY, model)
  highest = math.max(highest, s.epoch)
end
for route, chain in pairs(snap.routes) do
  redis.call('HSET', ROUTES_KEY, route, cjson.encode(chain))
  for _, m in ipairs(chain) do
    redis.call('SADD', MODELS_KEY, m)
  end
end
for route, entry in pairs(snap.active) do
  redis.call('HSET', ACTIVE_KEY, route, cjson.encode({ model = entry.model, epoch = entry.epoch }))
  highest = math.max(highest, entry.epoch)
end
for route, pin in pairs(snap.pins or {}) do
  redis.call('HSET', PINS_KEY, route, cjson.encode(pin))
  highest = math.max(highest, pin.epoch)
end
for replica, digest in pairs(snap.digests) do
  redis.call('HSET', DIGESTS_KEY, replica, digest)
end
redis.call('SET', EPOCH_KEY, highest)
return snapshot_json(now)
