"""atmx indexer: firehose consumer, repo verification, record validation and the PostgreSQL store."""

__version__ = "0.1.0"
