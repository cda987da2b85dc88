-- series_add: ARGV = prefix, floor, bucket_ms, keep_ms, max_fields, then field/count pairs
-- Adds one replica's tallies of one bucket (the replica's view of the store's clock picks it;
-- it sends each bucket once, after it ended) to the cluster's hash of that bucket: field
-- "route|model|kind" -> count, summed over replicas by HINCRBY. The bucket expires keep_ms
-- after it began, and takes no new fields once it holds max_fields (its memory is capped even
-- if replicas disagree on their names).

local bucket = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local max_fields = tonumber(ARGV[5])
local key = PREFIX .. 'series:' .. ARGV[3]
local fields = redis.call('HLEN', key)
if fields >= max_fields then
  return 0
end
for i = 6, #ARGV, 2 do
  redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
if fields == 0 then
  redis.call('PEXPIREAT', key, bucket + keep)
end
return 1
