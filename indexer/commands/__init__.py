"""The subcommands of `atmx`, one module per kind: services, queries, verify, backfill."""
