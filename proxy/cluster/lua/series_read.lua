-- series_read: ARGV = prefix, floor, resolution_ms, buckets
-- The cluster's series: the last `buckets` buckets that ended (Redis's clock; the one under
-- way is still being counted by the replicas), those that hold anything.
-- Returns {"now_ms", "buckets": [[start_ms, {field: count}], ...]}.

local resolution = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local now = now_ms()
local last = now - (now % resolution) - resolution
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
return cjson.encode({ now_ms = now, buckets = found })
