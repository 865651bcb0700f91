"""atmx XRPC API (namespace directory.atmx)."""
