"""podvisor-conmon: the per-container monitor (stdlib only).

One conmon process per container holds the container's stdio, writes its
CRI log, records its exit code, exit time and OOM kill in an exit file,
and serves attach and control sockets, detached from every other podvisor
process so that none of their restarts touches a running container. The
same program runs ExecSync commands under a deadline (``exec``).

contract.py specifies the command line, files and sockets: that is the
whole interface with the runtime worker, which never imports this package.

Modules: cli (arguments), detach (leaving the spawner), monitor (one
container's life), execsync (ExecSync), runtime (runc/crun command lines),
crilog (the log format), attach, control, console (pty), oom, reap
(subreaper and exit codes), loop (selector and signals), proctitle.
"""
