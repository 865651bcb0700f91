"""Who an account is: DID documents (pure parsing) and their resolution over HTTP and DNS,
with the handle check and a cache in memory and PostgreSQL."""
