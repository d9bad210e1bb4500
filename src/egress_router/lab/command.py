"""``egress-router lab``: the lab's subcommands, a click group the command line adds.

Kept with the lab rather than in ``cli``: the commands only drive the lab's own modules, which
are imported when a subcommand runs (the lab pulls in asyncio and rich, and the waiting container
starts through ``cli`` too, where every imported MiB counts).
"""

from __future__ import annotations

import sys

import click


@click.group()
def lab() -> None:
    """A local lab in network namespaces: client, router, node, gateway, destinations."""


_PREFIX = click.option(
    "--prefix", default="erlab", show_default=True, help="Namespace name prefix of the lab."
)
_MACVLAN = click.option(
    "--macvlan",
    default="true",
    show_default=True,
    help="The pod's assign-macvlan annotation: 'true' (the node's default-route interface) "
    "or the name of the node interface to use as the macvlan parent.",
)


@lab.command("up")
@_PREFIX
@_MACVLAN
def lab_up(prefix: str, macvlan: str) -> None:
    """Build the lab (no router configuration yet)."""
    from egress_router.lab import world as lab_module  # noqa: PLC0415 (see the imports)

    built = lab_module.up(prefix, macvlan=macvlan)
    click.echo(f"lab {prefix!r} is up: namespaces {', '.join(built.namespaces)}")


@lab.command("demo")
@_PREFIX
@_MACVLAN
@click.option("--keep", is_flag=True, help="Leave the lab running afterwards.")
def lab_demo(prefix: str, macvlan: str, keep: bool) -> None:
    """Build the lab, configure the router with the seed example, send real traffic."""
    from egress_router.lab import demo  # noqa: PLC0415

    sys.exit(demo.demo(prefix, keep=keep, macvlan=macvlan))


@lab.command("down")
@_PREFIX
def lab_down(prefix: str) -> None:
    """Remove the lab (also after a crash)."""
    from egress_router.lab import world as lab_module  # noqa: PLC0415

    lab_module.down(prefix)
    click.echo(f"lab {prefix!r} is down")


@lab.command("sweep")
@_PREFIX
def lab_sweep(prefix: str) -> None:
    """Remove leftovers of crashed labs whose prefix starts with PREFIX (live ones stay)."""
    from egress_router.lab import world as lab_module  # noqa: PLC0415

    removed = lab_module.sweep(prefix)
    click.echo("\n".join(removed) if removed else f"no leftovers of {prefix!r}")
