"""The image worker pool."""
