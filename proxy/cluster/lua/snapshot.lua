-- snapshot: ARGV = prefix. Everything, read at one instant: breakers of every known model,
-- active models, routes and digests. Writes nothing.

return snapshot_json(now_ms())
