-- probe_release: ARGS = {model, epoch}
-- Hands back a half-open probe's permit whose request said nothing about the model (the
-- client's own fault): another request may probe, and the permit is not later taken as lost
-- (which reopens the breaker). Ignored unless half-open at the probe's epoch with a probe
-- outstanding.

local model, epoch = ARGS.model, ARGS.epoch
local now = now_ms()
redis.call('SADD', MODELS_KEY, model)

local b = load_breaker(model)
if b.state ~= 'half_open' or b.epoch ~= epoch
    or b.probes_ok + b.probes_failed >= b.probes_issued then
  return unchanged_json(b, now)
end

b.probes_issued = b.probes_issued - 1
redis.call('HSET', breaker_key(model), 'probes_issued', b.probes_issued)
return unchanged_json(b, now)
