"""Generated protobuf/gRPC stubs for protos/voicebridge.proto (run `make protos`; never edit)."""
