"""Pod network records: ``<root>/net/pods/<pod id>.json``, one per pod.

A record is what a later DEL needs and what a repeated setup answers: the
network config the ADD used (DEL must get the same config, CNI spec
"Lifecycle & Ordering"), the CNI_ARGS and capability args, the netns path,
and once the chain finished, the cached result that DEL takes as
``prevResult``. The files are a ``workers/records.RecordDir``
(``podnet.Layout.records``): written atomically, a reader sees the old
record or the new one, never a torn one.

Why under the persistent root and not the run dir: host-local keeps its
leases under /var/lib, which survives a reboot, while the run dir does not.
If the records lived in /run a reboot would forget which pods hold leases
and nobody could ever DEL them; kept next to the leases, the reconcile after
a reboot finds every pod that is gone and releases its addresses. libcni
makes the same choice (/var/lib/cni/results).

Invariants
    - The record is written *before* the namespace is made or any plugin
      runs (state ``setting_up``) and removed *after* DEL succeeded, so a
      crash at any instant leaves a record for every pod that may hold
      network resources.
    - Callers hold the pod's lock while they write or delete its record.
"""

from __future__ import annotations

# The record's "state". NETNS: the namespace is made (or being made) and
# no plugin has run; SETTING_UP: the chain's ADD may have begun.
NETNS = "netns"
SETTING_UP = "setting_up"
READY = "ready"
