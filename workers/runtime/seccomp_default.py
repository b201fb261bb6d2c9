"""podvisor's RuntimeDefault seccomp profile: what a container may call.

An allow-list in the style of the well-known container runtime defaults:
every syscall not listed fails with EPERM. Listed are the calls ordinary
programs make (files, memory, processes, signals, sockets, time, the
event and async I/O interfaces). Left out are the calls that reach past
the container: kernel modules, kexec, reboot, clock and time setting,
accounting, swap, quotas, keyrings, BPF, perf events, ptrace and the
cross-process memory calls, userfaultfd, NUMA policy, the mount API,
namespace creation and entry, pivot_root, hostname setting, raw port I/O,
and the obsolete calls no current libc makes.

Some of those are allowed when the container holds the capability that
makes them safe to grant: with CAP_SYS_ADMIN, the mount API, namespaces,
sethostname and friends; with CAP_SYS_PTRACE, ptrace and the cross-process
calls; and so on (``BY_CAPABILITY``). ``clone`` is always allowed, but
without CAP_SYS_ADMIN only with no namespace flags (a filter on its flags
argument, whose position depends on the architecture); ``clone3`` passes
its flags in memory a filter cannot read, so without CAP_SYS_ADMIN it
fails with ENOSYS and libc falls back to ``clone``. ``personality`` is
allowed for the few personas programs ask for.

Syscall names the kernel of this host does not know are skipped by the
runtime (libseccomp resolves names per architecture), so one list serves
every architecture.
"""

from __future__ import annotations

import platform

# Allowed for every container.
ALWAYS: tuple[str, ...] = (
    # files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "getcwd", "getdents", "getdents64", "getxattr", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "ioctl", "lchown", "lchown32",
    "lgetxattr", "link", "linkat", "listxattr", "llistxattr", "_llseek", "lremovexattr",
    "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod", "mknodat",
    "newfstatat", "open", "openat", "openat2", "pipe", "pipe2", "pread64", "preadv",
    "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir",
    "sendfile", "sendfile64", "setxattr", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate",
    "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64",
    "utimes", "vmsplice", "write", "writev", "memfd_create", "memfd_secret",
    "fanotify_mark", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    # memory
    "brk", "madvise", "membarrier", "mincore", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "process_mrelease", "remap_file_pages",
    # processes, threads, scheduling and limits
    "arch_prctl", "capget", "capset", "clone", "execve", "execveat", "exit", "exit_group",
    "fork", "futex", "futex_time64", "futex_waitv", "get_robust_list", "get_thread_area",
    "getcpu", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "getrusage", "getsid", "gettid", "getuid", "getuid32", "ioprio_get",
    "ioprio_set", "kill", "pidfd_open", "pidfd_send_signal", "prctl",
    "prlimit64", "process_madvise", "restart_syscall", "rseq", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid",
    "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "setsid", "setuid", "setuid32", "tgkill", "tkill", "ugetrlimit", "uname", "vfork",
    "wait4", "waitid", "waitpid", "sysinfo", "times", "seccomp",
    # signals
    "alarm", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sigaction", "sigaltstack", "signal", "signalfd", "signalfd4",
    "sigpending", "sigprocmask", "sigreturn", "sigsuspend",
    # time (reading it, sleeping, timers)
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "gettimeofday", "nanosleep", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    # waiting for events, async I/O
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "_newselect",
    # sockets
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send",
    "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall",
    "socketpair",
    # System V and POSIX IPC (in the pod's IPC namespace)
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    # architecture specifics that are harmless
    "breakpoint", "cacheflush", "set_tls", "arm_fadvise64_64", "arm_sync_file_range",
    "sync_file_range2", "riscv_flush_icache", "riscv_hwprobe", "s390_pci_mmio_read",
    "s390_pci_mmio_write", "s390_runtime_instr", "sysmips", "spu_create", "spu_run",
    "subpage_prot", "sys_debug_setcontext", "switch_endian",
)

# Allowed with the capability named, which already grants what they do.
BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "bpf", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
        "open_tree", "perf_event_open", "pivot_root", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "finit_module", "init_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_vm_readv", "process_vm_writev",
                       "ptrace"),
    "CAP_SYS_RAWIO": ("ioperm", "iopl"),
    "CAP_SYS_TIME": ("adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime",
                     "clock_settime64", "settimeofday", "stime"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node",
                     "move_pages", "migrate_pages"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
}

# personality(2) personas a program may switch to: PER_LINUX, PER_LINUX32,
# UNAME26, and PER_LINUX32|UNAME26; 0xffffffff only queries the current one.
PERSONAS: tuple[int, ...] = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

# The namespace flags of clone(2) (CLONE_NEWNS ... CLONE_NEWCGROUP, and
# CLONE_NEWTIME): a container without CAP_SYS_ADMIN makes no namespaces.
CLONE_NAMESPACE_FLAGS = 0x7E020080
ENOSYS = 38

# libseccomp's names of the architectures a container's programs may use
# on each machine: the native one and the compat ones beside it.
_ARCHES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}


def architectures(machine: str | None = None) -> list[str]:
    """The architectures a profile names on this machine (``uname -m``)."""
    return list(_ARCHES.get(machine or platform.machine(), ()))


def clone_flags_argument(machine: str | None = None) -> int:
    """Which argument of clone(2) holds the flags: the second on s390,
    where the first two are swapped, the first everywhere else."""
    return 1 if (machine or platform.machine()).startswith("s390") else 0


def profile(capabilities: frozenset[str], machine: str | None = None) -> dict[str, object]:
    """The OCI ``linux.seccomp`` of a container holding ``capabilities``."""
    allowed = set(ALWAYS)
    for capability, names in BY_CAPABILITY.items():
        if capability in capabilities:
            allowed.update(names)
    admin = "CAP_SYS_ADMIN" in capabilities
    if not admin:
        allowed.discard("clone")
    syscalls: list[dict[str, object]] = [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"}]
    syscalls += [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]}
                 for persona in PERSONAS]
    if not admin:
        syscalls.append({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": clone_flags_argument(machine), "value": CLONE_NAMESPACE_FLAGS,
                      "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    # Every call not allowed fails with EPERM, the runtimes' default errno.
    return {"defaultAction": "SCMP_ACT_ERRNO", "architectures": architectures(machine),
            "syscalls": syscalls}
