"""The lab demo: build the world, configure the router with the seed example, send traffic.

What ``egress-router lab demo`` shows: every dial of `topology.DEMO_DIALS` judged from the far
side (which destination answered, which source address it saw).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from egress_router.lab.processes import (
    dial,
    router_command,
)
from egress_router.lab.topology import (
    CLIENT_POD4,
    DEMO_DIALS,
    DEMO_ENV,
    EGRESS_SOURCE4,
    ROUTER_POD4,
    Lab,
    LabError,
)
from egress_router.lab.world import (
    down,
    up,
)


@contextlib.contextmanager
def _lab_for_demo(prefix: str, keep: bool, console: Console, macvlan: str) -> Iterator[Lab]:
    lab = up(prefix, macvlan=macvlan)
    try:
        yield lab
    finally:
        if keep:
            console.print(
                f"kept the lab: try [bold]ip netns exec {lab.client} bash[/]; remove it with"
                f" [bold]egress-router lab down --prefix {prefix}[/]"
            )
        else:
            down(prefix)


def demo(
    prefix: str, keep: bool = False, console: Console | None = None, macvlan: str = "true"
) -> int:
    """Build the lab, set up the router with the classic example, dial through it.

    Prints a table of what the client dialled, who answered and which source
    the destination saw. Returns 0 if every dial left from the reserved source
    and reached the expected destination, else 1. Tears the lab down unless
    ``keep``. ``macvlan`` is the annotation's value, as for :func:`up`.
    """
    console = console or Console()
    console.print(f"building lab [bold]{prefix}[/] (namespaces {prefix}-*) ...")
    try:
        with _lab_for_demo(prefix, keep, console, macvlan) as lab:
            console.print(f"setting up the router in [bold]{lab.router}[/]:")
            for name, value in DEMO_ENV.items():
                first, *more = value.splitlines()
                console.print(
                    f"  {name}={first}",
                    *(f"    {line}" for line in more),
                    sep="\n",
                    markup=False,
                    highlight=False,
                )
            cp = router_command(lab, DEMO_ENV)
            if cp.returncode != 0:
                console.print(f"[red]router setup failed (exit status {cp.returncode}):[/]")
                console.print(cp.stderr.rstrip() or "(no output)", markup=False, highlight=False)
                return 1
            table = Table(title=f"client {CLIENT_POD4.ip} dials router {ROUTER_POD4.ip}")
            for column in ("dialled", "expected", "answered by", "source seen", "result"):
                table.add_column(column, no_wrap=True)
            failures = 0
            for proto, port, expected in DEMO_DIALS:
                r = dial(lab, proto, ROUTER_POD4.ip, port)
                ok = r.ok and r.server == expected and r.peer_ip == EGRESS_SOURCE4
                failures += not ok
                table.add_row(
                    f"{proto} {port}",
                    expected,
                    r.server or f"({r.error})",
                    str(r.peer_ip or "-"),
                    "[green]OK[/]" if ok else "[red]FAIL[/]",
                )
            console.print(table)
            return 1 if failures else 0
    except LabError as exc:
        console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        return 1
