"""The net worker pool: pod network namespaces and CNI (issue 4).

    ops.py      the bus ops and the pool's error boundary
    podnet.py   setup / teardown / status / reconcile of one pod
    podargs.py  op arguments -> CNI_ARGS and capability args
    cni.py      the CNI executor (spec 0.3.0 - 1.1.0)
    cniconf.py  finding and validating the network config
    netns.py    pinned network namespaces (pyroute2)
    store.py    what a pod network record holds (a workers/records.RecordDir)
    nodeip.py   the node's IPs, for hostNetwork pods

State: namespaces under ``<runroot>/netns``, pod locks (workers/locks.py)
under ``<runroot>/net/locks``, records (with the cached CNI results) under
``<root>/net/pods`` (store.py says why persistent).
"""
