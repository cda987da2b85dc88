-- budget: ARGS = {model, rpm, tpm, tokens}
-- A cluster-wide request and token budget per model, enforced before the provider enforces
-- its own (GCRA: one stored "theoretical arrival time" per limit, no counters to reset).
-- Burst allowance: one second's worth of each limit. Both limits are checked, and only
-- committed when both admit. Returns {"allowed", "retry_after_ms", "now_ms"}.

local model, rpm, tpm, tokens = ARGS.model, ARGS.rpm, ARGS.tpm, ARGS.tokens
local now = now_ms()

-- Each limit: key, milliseconds per unit, burst tolerance in ms, cost in units.
local limits = {}
if rpm > 0 then
  local t = 60000 / rpm
  table.insert(limits, { key = PREFIX .. 'budget:rpm:' .. model, t = t,
    tau = math.max(t, 1000), cost = 1 })
end
if tpm > 0 then
  local t = 60000 / tpm
  table.insert(limits, { key = PREFIX .. 'budget:tpm:' .. model, t = t,
    tau = math.max(t * tokens, 1000), cost = tokens })
end

local wait = 0
for _, l in ipairs(limits) do
  local tat = math.max(tonumber(redis.call('GET', l.key)) or now, now)
  l.tat = tat
  -- Admitted when the new arrival time stays within the burst tolerance.
  local over = tat + l.cost * l.t - now - l.tau
  if over > wait then
    wait = over
  end
end
if wait > 0 then
  return cjson.encode({ allowed = false, retry_after_ms = math.ceil(wait), now_ms = now })
end
for _, l in ipairs(limits) do
  local new_tat = l.tat + l.cost * l.t
  redis.call('SET', l.key, string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
return cjson.encode({ allowed = true, retry_after_ms = 0, now_ms = now })
