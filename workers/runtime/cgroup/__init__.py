"""The cgroup layer of the runtime pool, for cgroup v1, hybrid and v2 hosts.

hierarchy   which cgroup filesystems this host mounts, detected once
tree        directories of one cgroup path: make, remove, processes, kill
usage       reading usage (memory, CPU, I/O, pids, OOM kills)
limits      writing limits, the CRI's ``unified`` keys included
slices      systemd slice names and the cgroup paths they stand for
systemd     slices and scopes through systemd's D-Bus API
pods        the pod cgroups podvisor made: records, drain, release
"""
