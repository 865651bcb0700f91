"""Protobuf/gRPC modules generated from the .proto files here by scripts/gen-proto (do not edit)."""
