-- heartbeat: ARGV = prefix, floor, replica, routes digest, forget_ms
-- A replica says it is alive: its score in the replicas sorted set is Redis's time, and its
-- routes digest is recorded (replicas that disagree on routes are then visible). Replicas
-- silent for forget_ms are dropped, with their digests. Returns every replica still listed:
-- {"now_ms", "replicas": [{"replica", "seen_ms", "digest"}]}.

local replica, digest = ARGV[3], ARGV[4]
local forget = tonumber(ARGV[5])
local now = now_ms()

redis.call('ZADD', REPLICAS_KEY, now, replica)
redis.call('HSET', DIGESTS_KEY, replica, digest)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', REPLICAS_KEY, '-inf', '(' .. (now - forget))) do
  redis.call('ZREM', REPLICAS_KEY, gone)
  redis.call('HDEL', DIGESTS_KEY, gone)
end
local replicas = {}
local flat = redis.call('ZRANGE', REPLICAS_KEY, 0, -1, 'WITHSCORES')
for i = 1, #flat, 2 do
  table.insert(replicas, {
    replica = flat[i],
    seen_ms = tonumber(flat[i + 1]),
    digest = redis.call('HGET', DIGESTS_KEY, flat[i]) or '',
  })
end
return cjson.encode({ now_ms = now, replicas = replicas })
