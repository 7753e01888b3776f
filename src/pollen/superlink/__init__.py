"""The SuperLink: Fleet and Driver gRPC services, state, blobs and task dispatch."""
