"""podvisor-conmon: the per-container monitor (stdlib only)."""
