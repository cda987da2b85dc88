-- report: ARGS = {model, epoch, calls, failures, params}
-- Adds one replica's aggregated outcomes to the window and trips the breaker when a
-- threshold is crossed. Outcomes from another epoch, or for a breaker that is not closed,
-- change nothing: results admitted before a transition must not act after it.

local model, epoch, calls, failures = ARGS.model, ARGS.epoch, ARGS.calls, ARGS.failures
local p = ARGS.params
local now = now_ms()

local b = load_breaker(model)
if b.state ~= 'closed' or b.epoch ~= epoch then
  redis.call('SADD', MODELS_KEY, model)
  return unchanged_json(b, now)
end

local win = window_advance(model, now, p)
window_add(win, calls, failures)
if win.fresh then
  -- A new window: the model may be new too (known models are listed in snapshots).
  redis.call('SADD', MODELS_KEY, model)
end

local reason = nil
if win.calls >= p.minimum_calls and win.failures > 0
    and win.failures / win.calls >= p.failure_rate then
  reason = string.format('failure rate %d%% over %d calls',
    math.floor(100 * win.failures / win.calls + 0.5), win.calls)
elseif failures > 0 then
  -- Successes alone cannot complete a burst: the failures in the burst span were all
  -- there when the last of them was reported, over no more calls than now.
  local burst_calls, burst_failures = window_burst(win, p)
  if burst_failures >= p.burst_failures and burst_failures / burst_calls >= p.failure_rate then
    reason = string.format('burst: %d failures in %s s', burst_failures,
      string.format('%g', p.burst_ms / 1000))
  end
end

if not reason then
  -- Nothing moved: the answer carries the window, not the routes' active models (which only
  -- a transition changes, and which reach the mirror with it); the routes are not read.
  return cjson.encode({
    kind = 'breaker', now_ms = now, breaker = breaker_json(b, win.calls, win.failures), active = {},
    changed = false,
  })
end

-- A breaker that stayed closed longer than the trip memory starts its backoff afresh.
local trips = b.trips + 1
if now - b.since > p.trip_memory_ms then
  trips = 1
end
open_breaker(b, p, now, trips, reason, false)
save_breaker(b)
return change_json(b, now, true, 0, 0)
