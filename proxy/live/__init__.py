"""The Live API (WebSocket) dialect: setup-time failover and a byte-for-byte frame relay."""
