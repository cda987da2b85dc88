-- force: ARGS = {model, action, by, reason, params, via}
-- Operator action; always a transition, published and appended to the audit stream in the
-- same step. open: open with the wait of the next trip; close: closed, trips kept; reset:
-- closed, trips 0; force_open: open until closed or reset; disable: admits everything and
-- never trips. `via` (optional) names the replica whose admin API took the action.

local model, action, by, reason = ARGS.model, ARGS.action, ARGS.by, ARGS.reason
local p = ARGS.params
local via = ARGS.via or ''
local now = now_ms()

local b = load_breaker(model)
if action == 'open' then
  open_breaker(b, p, now, b.trips + 1, reason, false)
elseif action == 'close' then
  transition(b, 'closed', now, false)
elseif action == 'reset' then
  transition(b, 'closed', now, false)
  b.trips = 0
elseif action == 'force_open' then
  transition(b, 'forced_open', now, false)
elseif action == 'disable' then
  transition(b, 'disabled', now, false)
else
  return redis.error_reply('unknown breaker action ' .. action)
end
redis.call('SADD', MODELS_KEY, model)
b.reason = reason
b.forced_by = by
save_breaker(b)
local json = change_json(b, now, true, 0, 0)
audit(now, action, model, by, reason, via, b.epoch, {
  state = b.state, open_until_ms = b.open_until, trips = b.trips,
  active = active_models(cjson.decode(json).active),
})
return json
