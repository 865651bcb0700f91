"""PostgreSQL: the pool and schema, every statement the indexer writes with, every read the API
makes, and the leader lock of active/standby indexers."""
