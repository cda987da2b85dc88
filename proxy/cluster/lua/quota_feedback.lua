-- quota_feedback: ARGS = {scope, model, delay_ms, per_day (boolean), quota_id, decrease,
--                 min_scale, recovery_per_s, decrease_interval_ms}
-- A 429 for (credential scope, model): start or extend the cluster-wide cooldown, and cut
-- the rate scale, at most once per decrease interval: 429s from requests already in flight,
-- or arriving before the last cut could take effect, belong to the same overload. The scale
-- recovers additively from the cooldown's end; replicas compute the recovery from the stored
-- numbers, so it needs no further writes.
-- Returns (and publishes) {"now_ms", "quota": QuotaState}.

local scope, model, delay = ARGS.scope, ARGS.model, ARGS.delay_ms
local per_day, quota_id = ARGS.per_day, ARGS.quota_id
local decrease, min_scale, recovery = ARGS.decrease, ARGS.min_scale, ARGS.recovery_per_s
local interval = ARGS.decrease_interval_ms
local now = now_ms()
local key = quota_key(scope, model)

local q = load_quota(key)
local scale = quota_scale(q, now, recovery)
if now >= q.until_ms and now - q.decreased_ms >= interval then
  scale = math.max(min_scale, scale * decrease)
  q.decreased_ms = now
end
q.until_ms = math.max(q.until_ms, now + delay)
q.scale = scale
q.scale_from_ms = q.until_ms
q.per_day = q.per_day or per_day
if quota_id ~= '' then
  q.quota_id = quota_id
end
q.epoch = next_epoch()
redis.call('HSET', key, 'until_ms', q.until_ms, 'scale', q.scale, 'scale_from_ms',
  q.scale_from_ms, 'per_day', q.per_day and 1 or 0, 'quota_id', q.quota_id, 'epoch', q.epoch,
  'decreased_ms', q.decreased_ms)
-- Gone once the cooldown is over and the scale has fully recovered.
local recover_ms = math.ceil((1 - q.scale) / math.max(recovery, 1e-6) * 1000)
redis.call('PEXPIREAT', key, q.scale_from_ms + recover_ms + 1000)
redis.call('SADD', QUOTAS_KEY, scope .. '|' .. model)

local json = cjson.encode({ kind = 'quota', now_ms = now, quota = quota_json(scope, model, q) })
redis.call('PUBLISH', EVENTS_CHANNEL, json)
return json
