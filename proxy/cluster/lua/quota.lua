-- Quota helpers (prepended to the quota scripts after common.lua).

local function load_quota(key)
  local h = redis.call('HMGET', key, 'until_ms', 'scale', 'scale_from_ms', 'per_day',
    'quota_id', 'epoch', 'decreased_ms')
  return {
    until_ms = tonumber(h[1]) or 0,
    scale = tonumber(h[2]) or 1,
    scale_from_ms = tonumber(h[3]) or 0,
    per_day = h[4] == '1',
    quota_id = h[5] or '',
    epoch = tonumber(h[6]) or 0,
    decreased_ms = tonumber(h[7]) or 0,
  }
end

-- The rate scale at `now`: what was stored, recovered additively since scale_from_ms.
local function quota_scale(q, now, recovery)
  if now <= q.scale_from_ms then
    return q.scale
  end
  return math.min(1, q.scale + recovery * (now - q.scale_from_ms) / 1000)
end

local function quota_json(scope, model, q)
  return {
    scope = scope, model = model, until_ms = q.until_ms, scale = q.scale,
    scale_from_ms = q.scale_from_ms, per_day = q.per_day, quota_id = q.quota_id,
    epoch = q.epoch,
  }
end
