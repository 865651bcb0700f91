"""atproto repositories, proven: CAR files, signed commits, MST proofs and op inversion, keys,
and the string formats of the protocol. Pure: bytes in, verified values out."""
