"""The Open Inference Protocol (KServe v2), as Triton's clients and tools speak it.

``codec`` turns requests into the model's input and outputs into responses, ``schemas``
holds the protocol's JSON, ``routes`` its REST API under /v2, ``repository_routes`` the
model repository extension, ``fallback_routes`` the 404/405 for any other /v2 path, and
``grpc_server`` the same protocol over gRPC.
"""
