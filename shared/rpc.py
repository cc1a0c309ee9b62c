"""What both ends of the EdgeReplies gRPC call agree on, besides the proto."""

# Call metadata carrying GRPC_TOKEN: the edge refuses replies without it.
TOKEN_METADATA_KEY = "x-voicebridge-token"
