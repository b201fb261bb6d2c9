"""The stream pool: the streaming server behind Exec, Attach and PortForward."""
