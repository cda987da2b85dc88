-- series_add: ARGS = {bucket_ms, keep_ms, max_fields, counts ({field: count})}
-- Adds one replica's tallies of one bucket (the replica's view of the store's clock picks it;
-- it sends each bucket once, after it ended) to the cluster's hash of that bucket: field
-- "route|model|kind" -> count, summed over replicas by HINCRBY. The bucket expires keep_ms
-- after it began, and takes no new fields once it holds max_fields (its memory is capped even
-- if replicas disagree on their names).

local bucket, keep, max_fields = ARGS.bucket_ms, ARGS.keep_ms, ARGS.max_fields
local key = PREFIX .. 'series:' .. string.format('%d', bucket)
local fields = redis.call('HLEN', key)
if fields >= max_fields then
  return 0
end
for field, count in pairs(ARGS.counts) do
  redis.call('HINCRBY', key, field, string.format('%d', count))
end
if fields == 0 then
  redis.call('PEXPIREAT', key, bucket + keep)
end
return 1
