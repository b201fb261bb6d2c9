"""The storage worker pool: image layers unpacked once each, container root
filesystems as overlay mounts over them, and their disk usage.

    ops.py          the bus face: argument checks, error mapping, StorageService
    layers.py       unpack (once, atomically) and removal of layers
    extract.py      tar entries -> files, refusing escapes; OCI -> overlay whiteouts
    compression.py  gzip / zstd / plain layer streams
    digest.py       diff_id hashing and chain ids
    rootfs.py       create, mount again, remove a container's rootfs
    overlay.py      overlay mount and unmount, mountinfo
    reconcile.py    start-up cleanup of what a crash left
    fsinfo.py, usage.py   ImageFsInfo and the walk behind it
    layer_usage.py  the writable layers' usage: the op's answer, the background measurer
    usage_cache.py  the measurer's cache, one entry per container
    layout.py, records.py   paths and lock order, JSON records (flocks: workers/locks.py)

The on-disk layout is in layout.py. Nothing here imports another pool: the
supervisor says which blob to unpack and which layers a container stacks.
"""
