"""The runtime worker pool."""
