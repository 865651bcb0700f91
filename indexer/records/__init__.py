"""The record families atmx indexes: one module per family (its lexicon rules and what the API
shows of it), the registry that lists them, and the limits every decoded record must respect."""
