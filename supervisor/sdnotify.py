"""systemd's service notification protocol (sd_notify(3)): a few datagrams
on the unix socket systemd names in ``$NOTIFY_SOCKET``.

``READY=1`` goes once the CRI socket serves (after the start-up
reconcile), so a unit ordered before the kubelet (``Type=notify``) really
has a runtime to talk to; ``STOPPING=1`` when a stop begins; and, when the
unit sets ``WatchdogSec``, ``WATCHDOG=1`` at half that interval from the
daemon's event loop, so a wedged supervisor is restarted by systemd. Not
under systemd (no ``$NOTIFY_SOCKET``), nothing is sent.

The variables are taken out of the environment once read, so the workers
and monitors the supervisor starts never talk to systemd in its name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        path = environ.pop("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: its address starts with a NUL.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog = _watchdog_interval(environ.pop("WATCHDOG_USEC", ""),
                                           environ.pop("WATCHDOG_PID", ""))

    def notify(self, *states: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(states).encode(), self.address)
        except OSError as exc:
            # systemd gone or the socket wrong: the daemon serves anyway.
            log.warning("Cannot notify systemd (%s): %s", self.address.lstrip("\0"), exc)

    async def keep_alive(self) -> None:
        """Send WATCHDOG=1 every half interval until cancelled."""
        if self.watchdog is None or not self.address:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog / 2)


def _watchdog_interval(usec: str, pid: str) -> float | None:
    """The watchdog interval in seconds, if it is this process's."""
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None
