"""The request pipeline: forwarding, one exchange per request, the failover policy and what
it decides on (outcomes, evidence, deadlines, retry budget, throttle, capabilities)."""
