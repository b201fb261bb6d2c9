"""proto/malloc.py: the arena cap holds for a process's threads, and a trim is harmless.

Each case runs in a fresh interpreter: the cap must be set before the
process's first thread, and glibc keeps it for the rest of the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Threads that each malloc, then the number of thread arenas in /proc/self/maps:
# a thread arena is a 64 MiB reservation, a read-write head and a ---p tail.
PROBE = textwrap.dedent("""
    import sys, threading
    from podvisor.proto import malloc
    if sys.argv[1] == "cap":
        malloc.limit_arenas(1)
    def work():
        blobs = [bytearray(4096) for _ in range(100)]
        del blobs
        malloc.trim()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    maps = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        maps.append((low, high, fields[1], len(fields) > 5))
    print(sum(1 for (low, high, perm, named), (low2, high2, perm2, named2) in zip(maps, maps[1:])
              if not named and not named2 and perm == "rw-p" and perm2 == "---p"
              and high == low2 and high2 - low == 64 << 20))
""")


def thread_arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                          text=True, check=True, timeout=60)
    return int(done.stdout)


def test_threads_get_arenas_of_their_own_without_the_cap() -> None:
    # The premise: without the cap glibc gives threads their own arenas.
    assert thread_arenas("free") >= 1


def test_capped_process_keeps_every_thread_in_the_main_arena() -> None:
    assert thread_arenas("cap") == 0
