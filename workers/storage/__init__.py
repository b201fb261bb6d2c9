"""The storage worker pool."""
