-- acquire: ARGS = {model, params}
-- Asks for permission to send a request to a breaker that is not closed. Moves an open
-- breaker whose wait is over to half-open, hands out at most `probes` permits cluster-wide,
-- and reopens when permits were issued but never reported within the probe timeout.
-- Returns {"permit": bool, "change": Change}; only the change is published.
-- The same rules, stated in Python for the mirror: proxy/cluster/admission.py `decide`
-- (tests/test_admission_rules.py holds the two to the same answers).

local model, p = ARGS.model, ARGS.params
local now = now_ms()
redis.call('SADD', MODELS_KEY, model)

local b = load_breaker(model)
local changed = false

local function answer(permit)
  local json
  if changed then
    save_breaker(b)
    json = change_json(b, now, true, 0, 0)
  else
    json = unchanged_json(b, now)
  end
  return '{"permit":' .. tostring(permit) .. ',"change":' .. json .. '}'
end

if admits(b.state) then
  return answer(true)
end
if b.state == 'forced_open' then
  return answer(false)
end
if b.state == 'open' then
  if now < b.open_until then
    return answer(false)
  end
  transition(b, 'half_open', now, false)
  b.reason = 'open wait over: probing'
  changed = true
end
if b.state ~= 'half_open' then
  return redis.error_reply('breaker ' .. model .. ' has unknown state ' .. tostring(b.state))
end

local outstanding = b.probes_issued - b.probes_ok - b.probes_failed
if outstanding > 0 and now > b.last_permit + p.probe_timeout_ms then
  open_breaker(b, p, now, b.trips + 1, 'half-open probes lost', true)
  changed = true
  return answer(false)
end
if b.probes_issued < p.probes then
  -- A permit is not a transition: it belongs to the current half-open epoch.
  b.probes_issued = b.probes_issued + 1
  b.last_permit = now
  if not changed then
    redis.call('HSET', breaker_key(model), 'probes_issued', b.probes_issued,
      'last_permit', b.last_permit)
  end
  return answer(true)
end
return answer(false)
