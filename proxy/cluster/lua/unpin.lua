-- unpin: ARGV = prefix, route, by, reason, via
-- Removes the route's pin: a transition (new epoch, active model recomputed from the chain,
-- published). A route without a pin changes nothing (no epoch, nothing published). Either
-- way the request is audited. Returns the PinChange.

local route = ARGV[2]
local by, reason, via = ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()

local pin = load_pin(route)
if not pin then
  local epoch = tonumber(redis.call('GET', EPOCH_KEY)) or 0
  audit(now, 'unpin', route, by, reason, via, epoch, { unpinned = cjson.null })
  return pin_change_json(now, route, nil, epoch, {}, false, 'unpin')
end
redis.call('HDEL', PINS_KEY, route)
local epoch = redis.call('INCR', EPOCH_KEY)
local active = {}
local chain = redis.call('HGET', ROUTES_KEY, route)
if chain then
  active[route] = write_active(route, cjson.decode(chain), epoch)
end
local json = pin_change_json(now, route, nil, epoch, active, true, 'unpin')
audit(now, 'unpin', route, by, reason, via, epoch, {
  unpinned = pin.model, active = active_models(active),
})
return json
