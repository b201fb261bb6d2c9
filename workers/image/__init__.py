"""The image worker pool: registry pulls and the image store.

Modules, from names to bytes on disk:

- ``reference``: docker reference grammar and Docker Hub normalisation;
- ``registries_conf``: containers-registries.conf(5) v2, sources and short names;
- ``auth``, ``tls``, ``proxy``, ``transport``, ``registry``: the OCI
  distribution client (credentials and challenges, certs.d, the proxy
  variables, keep-alive HTTP on urllib3's pools, pull API);
- ``watchdog``: per-attempt progress timeout and cancellation;
- ``manifest``: media types, manifest/index/config parsing, platforms;
- ``policy``, ``identity``, ``sigstore``, ``trust``: containers-policy.json(5),
  its signedIdentity rules, cosign-style signatures and their keys, and the
  policy applied to one pull;
- ``blobs``, ``leases``, ``records``, ``store``: the content store, its GC
  protection (flocks from workers/locks.py) and the SQLite image records;
- ``pull``, ``coalesce``: one pull, and sharing it between identical callers;
- ``lookup``, ``cri``, ``settings``, ``ops``: what CRI callers write, what they
  get back, and the pool's service, built once per worker;
- ``filecache``: registries.conf and the policy, parsed again only on change.
"""
