-- force: ARGV = prefix, model, action, by, reason, params...
-- Operator action; always a transition. open: open with the wait of the next trip; close:
-- closed, trips kept; reset: closed, trips 0; force_open: open until closed or reset;
-- disable: admits everything and never trips.

local model = ARGV[2]
local action = ARGV[3]
local by = ARGV[4]
local reason = ARGV[5]
local p = read_params(6)
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
return change_json(b, now, true, 0, 0)
