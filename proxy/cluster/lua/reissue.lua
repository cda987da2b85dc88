-- reissue: ARGS = {models (the caller's configured models)}
-- A replica's snapshot showed the store's epoch counter below the floor: the store lost writes
-- (a failover to a replica that lagged, a restart without persistence). Its state is issued
-- again above the floor (see recover_epoch and reissue_state), published, so every replica adopts
-- it; nothing happens when the counter is no longer below the floor (another replica, or a
-- transition, did it first). Returns the Snapshot.

local now = now_ms()
for _, m in ipairs(ARGS.models) do
  redis.call('SADD', MODELS_KEY, m)
end
recover_epoch()
return snapshot_json(now)
