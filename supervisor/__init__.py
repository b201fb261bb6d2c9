"""The podvisor daemon: gRPC front, request router, worker pools, health."""
