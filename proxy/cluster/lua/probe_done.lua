-- probe_done: ARGS = {model, epoch, ok (boolean), params}
-- Result of a half-open probe. Closes after `probes` successes; one failure reopens with the
-- next, doubled wait. Ignored unless half-open at the probe's epoch with a probe outstanding.

local model, epoch, ok, p = ARGS.model, ARGS.epoch, ARGS.ok, ARGS.params
local now = now_ms()
redis.call('SADD', MODELS_KEY, model)

local b = load_breaker(model)
if b.state ~= 'half_open' or b.epoch ~= epoch
    or b.probes_ok + b.probes_failed >= b.probes_issued then
  return unchanged_json(b, now)
end

if not ok then
  b.probes_failed = b.probes_failed + 1
  open_breaker(b, p, now, b.trips + 1, 'half-open probe failed', true)
  save_breaker(b)
  return change_json(b, now, true, 0, 0)
end

b.probes_ok = b.probes_ok + 1
if b.probes_ok < p.probes then
  redis.call('HSET', breaker_key(model), 'probes_ok', b.probes_ok)
  return unchanged_json(b, now)
end
-- Trips are kept: a breaker that trips again within the trip memory waits longer.
transition(b, 'closed', now, false)
b.reason = 'half-open probes succeeded'
save_breaker(b)
return change_json(b, now, true, 0, 0)
