-- pin: ARGS = {route, model, ttl_ms, by, reason, via}
-- Operator pin: the route serves `model` (which must be in its chain) until Redis time
-- now + ttl_ms, as long as the model's breaker admits (see pick_active). A new pin replaces
-- the route's previous one. A transition: new epoch, active model recomputed, published,
-- audited. Returns (and publishes) the PinChange.

local route, model, ttl = ARGS.route, ARGS.model, ARGS.ttl_ms
local by, reason, via = ARGS.by, ARGS.reason, ARGS.via
local now = now_ms()

local stored = redis.call('HGET', ROUTES_KEY, route)
if not stored then
  return redis.error_reply('unknown route ' .. route)
end
local chain = cjson.decode(stored)
if not chain_has(chain, model) then
  return redis.error_reply('model ' .. model .. ' is not in the chain of route ' .. route)
end
if not ttl or ttl <= 0 then
  return redis.error_reply('the pin needs a positive ttl')
end

local epoch = next_epoch()
local pin = {
  model = model, until_ms = now + ttl, since_ms = now, by = by, reason = reason, epoch = epoch,
}
redis.call('HSET', PINS_KEY, route, cjson.encode(pin))
local active = { [route] = write_active(route, chain, epoch) }
local json = pin_change_json(now, route, pin, epoch, active, true, 'pin')
audit(now, 'pin', route, by, reason, via, epoch, {
  model = model, until_ms = pin.until_ms, active = active_models(active),
})
return json
