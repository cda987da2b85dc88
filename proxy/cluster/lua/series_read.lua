-- series_read: ARGS = {resolution_ms, buckets, settle_ms}
-- The cluster's series: the last `buckets` buckets that ended settle_ms ago or more (Redis's
-- clock; replicas send a bucket with their first heartbeat after it ended), those that hold
-- anything. Returns {"now_ms", "last_ms", "buckets": [[start_ms, {field: count}], ...]}.

local resolution, count = ARGS.resolution_ms, ARGS.buckets
local now = now_ms()
local settled = now - ARGS.settle_ms
local last = settled - (settled % resolution) - resolution
local found = {}
for i = count - 1, 0, -1 do
  local start = last - i * resolution
  local flat = redis.call('HGETALL', PREFIX .. 'series:' .. string.format('%d', start))
  if #flat > 0 then
    local counts = {}
    for j = 1, #flat, 2 do
      counts[flat[j]] = tonumber(flat[j + 1])
    end
    table.insert(found, { start, counts })
  end
end
return cjson.encode({ now_ms = now, last_ms = last, buckets = found })
