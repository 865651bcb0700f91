"""atmx indexer: firehose consumer, repo verification, record validation and the PostgreSQL store."""
