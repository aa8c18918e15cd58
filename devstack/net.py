"""Loopback ports for the processes Sfumato starts itself (dev Redis, test SeaweedFS).

The dev launcher and the tests never assume a fixed port (6379, 8333 ...): the machine may
already run a shared service there, and two test runs side by side must not meet. A port is
found by letting the kernel pick one for a socket bound to 127.0.0.1, then closing it. Another
process could take it before ours binds; that race is narrow, and the starters report a failed
bind clearly instead of talking to a stranger.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago.

    All sockets stay open until every port is chosen, so the kernel never hands out the same
    port twice in one call (needed when one process opens several listeners).
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port(host: str = LOOPBACK) -> int:
    """One TCP port that was free on ``host`` a moment ago (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def port_accepts(port: int, host: str = LOOPBACK, timeout_s: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
