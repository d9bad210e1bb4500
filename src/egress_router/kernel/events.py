"""Tell the waiting container, within milliseconds, that the kernel's state may have changed.

Drift used to be found by a poll every ten seconds. The kernel announces
every change the router cares about on netlink multicast groups: links,
addresses, routes and policy rules (rtnetlink), forwarding (the ``netconf``
groups, which carry ``forwarding`` changes for ``all`` and each device), and
every committed nftables transaction (``NFNLGRP_NFTABLES``, which iptables-nft
commits go through too). `Watcher` subscribes to them with two plain netlink
sockets and a thread; it does not parse a message, it only says "something
changed" (the reconciler's comparison decides what). Our own applies and
repairs are announced too: they cost one comparison that finds nothing.

A flood (10,000 set elements of one apply) may overflow the socket buffer;
the kernel then reports ``ENOBUFS``, which means the same thing: something
changed. Plain sockets rather than pyroute2's ``IPRoute.bind()``: pyroute2
would add about 23 MiB to the long-running process.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
# rtnetlink multicast groups (enum rtnetlink_groups): bit (group - 1) of the bind mask.
RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19
RTNLGRP_IPV4_NETCONF = 24
RTNLGRP_IPV6_NETCONF = 25
NFNLGRP_NFTABLES = 7
ROUTE_GROUPS = (
    RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE,
    RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE, RTNLGRP_IPV4_NETCONF,
    RTNLGRP_IPV6_NETCONF,
)


def group_mask(groups: tuple[int, ...]) -> int:
    mask = 0
    for group in groups:
        mask |= 1 << (group - 1)
    return mask


class Watcher:
    """Calls ``changed`` from its own thread whenever the kernel announces a change."""

    def __init__(self, changed: Callable[[], object]) -> None:
        self._changed = changed
        self._sockets: list[socket.socket] = []
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Subscribe and start the thread; False when no subscription worked (poll only)."""
        for proto, groups in (
            (NETLINK_ROUTE, ROUTE_GROUPS),
            (NETLINK_NETFILTER, (NFNLGRP_NFTABLES,)),
        ):
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
                sock.bind((0, group_mask(groups)))
                sock.setblocking(False)
            except OSError as err:
                log.warning("cannot watch kernel changes (netlink protocol %d): %s; "
                            "drift is found by the periodic check only", proto, err)
                continue
            self._sockets.append(sock)
        if not self._sockets:
            return False
        self._thread = threading.Thread(target=self._run, name="kernel-events", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        # Signals are for the main thread (see wait._serve).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        watched = [*self._sockets, self._stop_r]
        while True:
            try:
                ready, _, _ = select.select(watched, [], [])
            except OSError:
                return
            if self._stop_r in ready:
                return
            for sock in ready:
                self._drain(sock)
            self._changed()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        for _ in range(1024):  # bounded: a flood is read on the next turn
            try:
                if not sock.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError:
                continue  # ENOBUFS: messages were lost, which says "changed" all the same

    def stop(self) -> None:
        self._stop_w.send(b"x")
        if self._thread is not None:
            self._thread.join(1.0)
        for sock in [*self._sockets, self._stop_r, self._stop_w]:
            sock.close()
        self._sockets = []
