"""The contract between podvisor's processes: the CRI API, the bus envelope,
the op catalogue and the error codes. Nothing here imports another room."""
