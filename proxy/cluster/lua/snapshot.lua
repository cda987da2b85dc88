-- snapshot: no ARGS. Everything, read at one instant: breakers of every known
-- model, active models, routes, digests and pins. Writes nothing, except that pins whose time is up
-- are removed first (each removal a published, audited transition): every replica runs this
-- about once a second, so an expired pin is gone cluster-wide within a reconcile interval.

local now = now_ms()
expire_pins(now)
return snapshot_json(now)
