-- unpin: ARGS = {route, by, reason, via}
-- Removes the route's pin: a transition (new epoch, active model recomputed from the chain,
-- published). A route without a pin changes nothing (no epoch, nothing published). Either
-- way the request is audited. Returns the PinChange.

local route, by, reason, via = ARGS.route, ARGS.by, ARGS.reason, ARGS.via
local now = now_ms()

local pin = load_pin(route)
if not pin then
  local epoch = tonumber(redis.call('GET', EPOCH_KEY)) or 0
  audit(now, 'unpin', route, by, reason, via, epoch, { unpinned = cjson.null })
  return pin_change_json(now, route, nil, epoch, {}, false, 'unpin')
end
local epoch, active = drop_pin(route)
local json = pin_change_json(now, route, nil, epoch, active, true, 'unpin')
audit(now, 'unpin', route, by, reason, via, epoch, {
  unpinned = pin.model, active = active_models(active),
})
return json
