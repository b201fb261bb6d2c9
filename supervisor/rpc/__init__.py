"""CRI RPC handlers: one module per RPC group, one coroutine per RPC."""
