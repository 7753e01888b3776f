"""Transport: addresses, gRPC channels and servers, chunked blob streaming, proto conversion.

Knows nothing of SuperLink or strategies. Credentials (TLS) and per-request
authentication metadata plug in here.
"""
