"""Validators for the record kinds atmx indexes, one module per kind."""
