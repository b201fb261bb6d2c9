"""podvisor's default AppArmor profile, ``podvisor-default``: its text, and
loading it into the kernel.

What the profile does. It starts from "everything the OCI spec already
grants" (files, network, the capabilities runc or crun leave the process)
and takes away what lets a container reach the node through the kernel's
shared files: writing anywhere in /proc but the container's own processes
and the IPC namespace's sysctls (kernel.shm*, kernel.msg*, kernel.sem*),
reading or writing /proc/kcore and /proc/sysrq-trigger, writing anywhere in
/sys but the cgroup tree, reading /sys/firmware, /sys/kernel/security and
the powercap energy counters (a side channel, CVE-2020-8694), and every
mount. Signals and ptrace stay inside the container, and the container may
be signalled by unconfined processes, by runc and crun (confined under those
names on some distributions) and by the runtime worker's own profile.
The peers' defaults (CRI-O's crio-default, containerd's
cri-containerd.apparmor.d) confine the same things; the rules here are ours.

When it is loaded. Not at worker start: a node without AppArmor, or without
apparmor_parser, pays nothing. The first container (or pod) in a runtime
worker process that asks for the default runs ``apparmor_parser -Kr``
(replace, skip the cache), so a podvisor upgrade, whose workers are new
processes, replaces an older ``podvisor-default`` in the kernel, as CRI-O
replaces crio-default at every start. Later requests in the same process
only check the kernel's list and load again if an administrator unloaded
it. Loading is idempotent (several workers loading at once each replace the
profile with the same text) and a failure is a FailedPrecondition for the
pod or container asking, never an unconfined container.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading

from ...proto.errors import FailedPrecondition, shorten

log = logging.getLogger(__name__)

PROFILE = "podvisor-default"
LOADED_PROFILES = "/sys/kernel/security/apparmor/profiles"
POLICY_DIR = "/etc/apparmor.d"
# apparmor_parser lives in /sbin (Debian, Ubuntu) or /usr/sbin, which a
# daemon's PATH may leave out.
PARSER_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
# Compiling the profile takes well under a second on a node, tens of
# seconds under emulation; a parser stuck longer than this is reported.
PARSER_TIMEOUT = 120.0

# The rules, after the header profile_text() adds. Deny rules win over the
# broad allows whatever their order, so each deny is written to miss what
# must stay allowed: the globs name the first letters that differ from the
# allowed names ("[^0-9s/]*" is any /proc entry that is not a process and
# does not start with "s"). "/" is excluded from every class so a rule never
# reaches into a deeper directory than it spells.
RULES = """\
  # What the runtime already granted: files, sockets, capabilities.
  file,
  network,
  capability,
  umount,

  # /proc: the container writes only its own processes' files (numeric
  # directories) and the sysctls of its IPC namespace.
  deny @{PROC}/* w,
  deny @{PROC}/[^0-9s/]*/** w,
  deny @{PROC}/s[^y/]*/** w,
  deny @{PROC}/sy[^s/]*/** w,
  deny @{PROC}/sys?*/** w,
  deny @{PROC}/sys/[^k/]*/** w,
  deny @{PROC}/sys/k[^e/]*/** w,
  deny @{PROC}/sys/kernel/*/** w,
  deny @{PROC}/sys/kernel/[^ms/]* w,
  deny @{PROC}/sys/kernel/m[^s/]* w,
  deny @{PROC}/sys/kernel/ms[^g/]* w,
  deny @{PROC}/sys/kernel/s[^eh/]* w,
  deny @{PROC}/sys/kernel/se[^m/]* w,
  deny @{PROC}/sys/kernel/sh[^m/]* w,
  deny @{PROC}/kcore rwklx,
  deny @{PROC}/sysrq-trigger rwklx,

  # /sys: read-only but for the cgroup tree; nothing of the firmware,
  # the LSMs or the energy counters.
  deny /sys/* wklx,
  deny /sys/[^f/]*/** wklx,
  deny /sys/f[^s/]*/** wklx,
  deny /sys/fs/[^c/]*/** wklx,
  deny /sys/fs/c[^g/]*/** wklx,
  deny /sys/fs/cg[^r/]*/** wklx,
  deny /sys/fs/cgr[^o/]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,

  deny mount,
"""


def profile_text(name: str = PROFILE, policy_dir: str = POLICY_DIR,
                 daemon_label: str = "unconfined") -> str:
    """The profile as apparmor_parser reads it on this node.

    The ABI pin and the includes are used when the node's policy directory
    has them (AppArmor 3 warns about a profile without an ABI; the tunables
    define ``@{PROC}``); without them ``@{PROC}`` is defined here.
    ``daemon_label`` is the runtime worker's own profile, whose processes
    (runc, conmon) signal the container.
    """
    def has(entry: str) -> bool:
        return os.path.exists(os.path.join(policy_dir, entry))

    head = []
    if has("abi/3.0"):
        head.append("abi <abi/3.0>,")
    head.append("#include <tunables/global>" if has("tunables/global") else "@{PROC}=/proc/")
    body = ["  #include <abstractions/base>"] if has("abstractions/base") else []
    peers = ["unconfined", "runc", "crun"]
    if daemon_label not in peers:
        peers.append(daemon_label)
    body.append("  # Who may signal the container's processes: the host's unconfined")
    body.append("  # processes, the OCI runtimes and podvisor itself.")
    body += [f"  signal (receive) peer={peer}," for peer in peers]
    body.append(f"  signal (send,receive) peer={name},")
    body.append(f"  ptrace (trace,tracedby,read,readby) peer={name},")
    return ("\n".join(head) + "\n\n"
            + f"profile {name} flags=(attach_disconnected,mediate_deleted) {{\n"
            + "\n".join(body) + "\n\n" + RULES + "}\n")


def loaded_profiles(path: str = LOADED_PROFILES) -> set[str]:
    """Profile names from the kernel's list ("name (mode)" lines)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return {line.rsplit(" (", 1)[0] for line in f if line.strip()}
    except OSError:
        return set()


def in_user_namespace(uid_map: str = "/proc/self/uid_map") -> bool:
    """Whether the caller's user namespace is not the initial one, whose
    map is the whole uid range onto itself."""
    try:
        with open(uid_map, encoding="ascii") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except FileNotFoundError:  # no user namespaces in this kernel
        return False


def own_label(current: str = "/proc/self/attr/current") -> str:
    """This process's AppArmor profile ("unconfined" when it has none)."""
    try:
        with open(current, encoding="utf-8", errors="replace") as f:
            label = f.read().strip("\0\n ")
    except OSError:
        return "unconfined"
    # "name (enforce)"; a profile name has no spaces.
    return label.split(" ", 1)[0] or "unconfined"


class DefaultProfile:
    """``podvisor-default`` in the kernel, loaded at first use in this process.

    One instance per runtime worker process (``NODE``): what it remembers,
    that this process has replaced the profile, is true of the process, and a
    new process (an upgrade, a restart) replaces it again. A lock keeps the
    worker's threads from running the parser twice at once.
    """

    def __init__(self, name: str = PROFILE, loaded: str = LOADED_PROFILES,
                 policy_dir: str = POLICY_DIR, search_path: str = PARSER_PATH,
                 uid_map: str = "/proc/self/uid_map") -> None:
        self.name = name
        self.uid_map = uid_map
        self.loaded = loaded
        self.policy_dir = policy_dir
        self.search_path = search_path
        self._lock = threading.Lock()
        self._replaced = False
        self._warned_missing = False
        # A process never changes user namespace (setns refuses a threaded
        # one): read once, not per container.
        self._nested: bool | None = None

    def parser(self) -> str | None:
        """apparmor_parser's path, None when the node has none."""
        return shutil.which("apparmor_parser", path=self.search_path)

    def usable(self) -> bool:
        """Whether this node can load the profile: containers that ask for no
        profile get it only then, as containerd applies its default only
        where apparmor_parser exists and the daemon is not in a user
        namespace (pkg/apparmor hostSupports), where loading is refused."""
        if self._nested is None:
            self._nested = in_user_namespace(self.uid_map)
        if self._nested:
            why = "podvisor runs in a user namespace, where no profile can be loaded"
        elif self.parser() is None:
            why = "apparmor_parser is not installed"
        else:
            return True
        if not self._warned_missing:
            self._warned_missing = True
            log.warning("AppArmor is enabled but %s: containers that ask for no AppArmor "
                        "profile run unconfined, and RuntimeDefault is refused", why)
        return False

    def ensure(self) -> str:
        """Load the profile unless this process already did and it is still
        in the kernel; its name. FailedPrecondition when it cannot be loaded."""
        with self._lock:
            if self._replaced and self.name in loaded_profiles(self.loaded):
                return self.name
            self._replaced = False
            self._load()
            if self.name not in loaded_profiles(self.loaded):
                raise FailedPrecondition(f"AppArmor profile {self.name} was loaded by "
                                         "apparmor_parser but is not in the kernel's list")
            self._replaced = True
            log.info("Loaded the AppArmor profile %s", self.name)
            return self.name

    def _load(self) -> None:
        parser = self.parser()
        why = f"the default AppArmor profile {self.name} cannot be loaded"
        if parser is None:
            raise FailedPrecondition(f"{why}: apparmor_parser is not installed "
                                     "(Debian and Ubuntu: the apparmor package)")
        text = profile_text(self.name, self.policy_dir, own_label())
        try:
            done = subprocess.run([parser, "-Kr"], input=text.encode(), capture_output=True,
                                  timeout=PARSER_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise FailedPrecondition(
                f"{why}: apparmor_parser ran longer than {PARSER_TIMEOUT:.0f}s") from None
        except OSError as e:
            raise FailedPrecondition(f"{why}: {shorten(e)}") from None
        if done.returncode != 0:
            out = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise FailedPrecondition(f"{why}: apparmor_parser exited with {done.returncode}: "
                                     f"{shorten(out)}")


NODE = DefaultProfile()
