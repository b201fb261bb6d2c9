"""Worker processes: the shared base and one package per pool."""
