-- series_add: ARGV = prefix, floor, resolution_ms, keep_ms, max_fields, then field/count pairs
-- Adds one replica's tallies of the last heartbeat interval to the cluster's bucket of the
-- current time (Redis's clock): a hash per bucket, field "route|model|kind" -> count, summed
-- over replicas by HINCRBY. The bucket expires keep_ms after it began, and takes no new
-- fields past max_fields (its memory is capped even if replicas disagree on their names).
-- Returns the bucket's start (ms).

local resolution = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local max_fields = tonumber(ARGV[5])
local now = now_ms()
local bucket = now - (now % resolution)
local key = PREFIX .. 'series:' .. string.format('%d', bucket)
local fields = redis.call('HLEN', key)
if fields >= max_fields then
  return bucket
end
for i = 6, #ARGV, 2 do
  redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
if fields == 0 then
  redis.call('PEXPIREAT', key, bucket + keep)
end
return bucket
