-- quota_snapshot: no ARGS. Every live quota condition; forgets the expired ones.

local now = now_ms()
local quotas = {}
for _, member in ipairs(redis.call('SMEMBERS', QUOTAS_KEY)) do
  local sep = string.find(member, '|', 1, true)
  local scope, model = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local key = quota_key(scope, model)
  if redis.call('EXISTS', key) == 1 then
    table.insert(quotas, quota_json(scope, model, load_quota(key)))
  else
    redis.call('SREM', QUOTAS_KEY, member)
  end
end
return cjson.encode({
  now_ms = now, epoch = tonumber(redis.call('GET', EPOCH_KEY)) or 0, quotas = quotas,
})
