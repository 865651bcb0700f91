"""The XRPC API (namespace directory.atmx): the aiohttp application and its middleware, one
handler per method reading through indexer/store/queries.py, the subscribeBindings stream,
inter-service auth, the lexicons, the OpenAPI document and the status page."""
