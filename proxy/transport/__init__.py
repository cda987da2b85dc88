"""The upstream HTTP client and pool, egress proxy and TLS, header rules, ASGI I/O."""
