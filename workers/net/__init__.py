"""The net worker pool."""
