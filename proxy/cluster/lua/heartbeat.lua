-- heartbeat: ARGS = {replica, digest (of its routes), forget_ms}
-- A replica says it is alive: its score in the replicas sorted set is Redis's time, and its
-- routes digest is recorded (replicas that disagree on routes are then visible). Replicas
-- silent for forget_ms are dropped, with their digests. Returns every replica still listed
-- and the epoch counter, so the replica reads the whole state only when the counter moved
-- (see Coordinator.reconcile_if_moved):
-- {"now_ms", "epoch", "replicas": [{"replica", "seen_ms", "digest"}]}.
-- Runs on every replica about once a second, so it issues as few commands as it can: the
-- digest is written only when it differs, the replicas are read once.

local replica, digest, forget = ARGS.replica, ARGS.digest, ARGS.forget_ms
local now = now_ms()

redis.call('ZADD', REPLICAS_KEY, now, replica)
local digests = {}
local flat = redis.call('HGETALL', DIGESTS_KEY)
for i = 1, #flat, 2 do
  digests[flat[i]] = flat[i + 1]
end
if digests[replica] ~= digest then
  redis.call('HSET', DIGESTS_KEY, replica, digest)
  digests[replica] = digest
end
local replicas = {}
flat = redis.call('ZRANGE', REPLICAS_KEY, 0, -1, 'WITHSCORES')
for i = 1, #flat, 2 do
  local name, seen = flat[i], tonumber(flat[i + 1])
  if seen < now - forget then
    redis.call('ZREM', REPLICAS_KEY, name)
    redis.call('HDEL', DIGESTS_KEY, name)
  else
    table.insert(replicas, { replica = name, seen_ms = seen, digest = digests[name] or '' })
  end
end
return cjson.encode({
  now_ms = now,
  epoch = tonumber(redis.call('GET', EPOCH_KEY)) or 0,
  replicas = replicas,
})
