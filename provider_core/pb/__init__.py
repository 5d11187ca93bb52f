"""Generated protobuf and gRPC modules for provider.v1 (tools/gen_proto.py).

Only the gRPC layer of provider_core imports these; backends never do.
"""
