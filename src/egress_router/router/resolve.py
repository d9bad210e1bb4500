"""Turn DNS-named destinations into addresses, and keep those answers fresh.

A destination may be a name (``443 tcp api.example.com``): services move,
and their owners publish the move in DNS, not in our ConfigMap. The name is
resolved with the pod's own resolver (``/etc/resolv.conf``) when the rules are
applied: A records for an IPv4 source, AAAA for an IPv6 one, every address
used (the ruleset spreads new connections over them). The waiting container
asks again when the answer's TTL runs out, bounded so that a TTL of 0 does
not hammer the resolver and one of a week does not pin a stale address.

A lookup that fails keeps the name's last good addresses (a DNS hiccup must
not take a working rule away) and is reported; a name that never resolved
has no rule until it does. dnspython is imported only when a configuration
has names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from egress_router.core import config

log = logging.getLogger(__name__)

DEFAULT_MIN_TTL = config.DEFAULT_DNS_MIN_TTL
DEFAULT_MAX_TTL = config.DEFAULT_DNS_MAX_TTL
DEFAULT_TIMEOUT = 3.0
_RECORD = {4: "A", 6: "AAAA"}


class ResolveError(RuntimeError):
    """A name could not be resolved; the message says which and why."""


@dataclass(frozen=True)
class Answer:
    """The usable addresses of one name (sorted) and the seconds until asking again."""

    addresses: tuple[config.IPAddress, ...]
    ttl: float


class Resolver(Protocol):
    """Looks names up; raises `ResolveError`."""

    def resolve(self, host: str, families: Sequence[int]) -> Answer: ...


def _usable(address: config.IPAddress) -> bool:
    return not (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
    )


def _ordered(addresses: Iterable[config.IPAddress]) -> tuple[config.IPAddress, ...]:
    return tuple(sorted(set(addresses), key=lambda a: (a.version, int(a))))


class DnsResolver:
    """The pod's resolver through dnspython (``/etc/resolv.conf``, search list honoured)."""

    def __init__(
        self,
        *,
        min_ttl: float = DEFAULT_MIN_TTL,
        max_ttl: float = DEFAULT_MAX_TTL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.timeout = timeout

    def resolve(self, host: str, families: Sequence[int]) -> Answer:
        # Lazy: dnspython costs several MiB, and most configurations have no names.
        import dns.exception  # noqa: PLC0415
        import dns.resolver  # noqa: PLC0415

        try:
            # A fresh resolver reads /etc/resolv.conf again: the pod's DNS may change.
            resolver = dns.resolver.Resolver()
        except dns.exception.DNSException as err:
            raise ResolveError(f"cannot resolve {host}: no usable resolver: {err}") from None
        resolver.lifetime = self.timeout
        addresses: list[config.IPAddress] = []
        ttl = self.max_ttl
        for family in families:
            try:
                answer = resolver.resolve(host, _RECORD[family], search=True)
            except dns.resolver.NoAnswer:
                continue  # no record of this type; the other family may have one
            except dns.resolver.NXDOMAIN:
                raise ResolveError(f"cannot resolve {host}: no such name (NXDOMAIN)") from None
            except dns.exception.Timeout:
                raise ResolveError(
                    f"cannot resolve {host}: no answer within {self.timeout:g}s"
                ) from None
            except dns.exception.DNSException as err:
                raise ResolveError(f"cannot resolve {host}: {err}") from None
            if answer.rrset is not None:
                ttl = min(ttl, float(answer.rrset.ttl))
            addresses += [ipaddress.ip_address(r.address) for r in answer]
        return self.answer(host, addresses, ttl, families)

    def answer(
        self,
        host: str,
        addresses: Iterable[config.IPAddress],
        ttl: float,
        families: Sequence[int],
    ) -> Answer:
        """Filter and bound a raw answer (separate from the lookup for unit tests)."""
        found = list(addresses)
        usable = _ordered(a for a in found if _usable(a) and a.version in families)
        if not usable:
            wanted = " or ".join(_RECORD[f] for f in families)
            if found:
                shown = ", ".join(str(a) for a in found)
                raise ResolveError(
                    f"cannot use {host}: it resolves to {shown}, none of which can be a "
                    "destination (loopback, link-local, multicast or unspecified)"
                )
            raise ResolveError(f"cannot resolve {host}: no {wanted} record")
        return Answer(usable, min(max(ttl, self.min_ttl), self.max_ttl))


@dataclass
class _Entry:
    addresses: tuple[config.IPAddress, ...] = ()
    due: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Refresh:
    """What one round of lookups did: which names changed and which failed (with why)."""

    changed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


class Cache:
    """The last good answer of every name and when to ask again.

    ``retry`` is how long to wait after a failed lookup before the next one.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        retry: float = DEFAULT_MIN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._retry = retry
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def refresh(
        self, hosts: Sequence[str], families: Sequence[int], *, force: bool = False
    ) -> Refresh:
        """Look up the names that are due (all of them with ``force``); forget the others."""
        for gone in set(self._entries) - set(hosts):
            del self._entries[gone]
        changed: list[str] = []
        failed: list[tuple[str, str]] = []
        for host in hosts:
            entry = self._entries.setdefault(host, _Entry())
            now = self._clock()
            if not force and entry.due > now:
                continue
            try:
                answer = self._resolver.resolve(host, families)
            except ResolveError as err:
                entry.error = str(err)
                entry.due = now + self._retry
                failed.append((host, str(err)))
                kept = ", ".join(str(a) for a in entry.addresses) or "none"
                log.warning("%s; keeping its last good addresses (%s)", err, kept)
                continue
            entry.error = None
            entry.due = now + answer.ttl
            if answer.addresses != entry.addresses:
                if entry.addresses:
                    log.info(
                        "%s now resolves to %s (was %s)",
                        host,
                        ", ".join(map(str, answer.addresses)),
                        ", ".join(map(str, entry.addresses)),
                    )
                entry.addresses = answer.addresses
                changed.append(host)
        return Refresh(tuple(changed), tuple(failed))

    def next_due(self) -> float | None:
        """The monotonic time of the next lookup, None without names."""
        return min((e.due for e in self._entries.values()), default=None)

    def answers(self) -> dict[str, tuple[config.IPAddress, ...]]:
        return {host: entry.addresses for host, entry in self._entries.items()}

    def errors(self) -> dict[str, str]:
        return {host: e.error for host, e in self._entries.items() if e.error is not None}


def substitute(
    destinations: config.Destinations,
    answers: Mapping[str, Sequence[config.IPAddress]],
    families: Sequence[int],
) -> config.Destinations:
    """Replace named rules and fallbacks by one rule (fallback) per address of their answer.

    Names without an answer simply have no rule yet. The result has no named
    entries left: it is what the ruleset renders.
    """
    rules = list(destinations.rules)
    fallbacks = list(destinations.fallbacks)
    for named in destinations.named:
        rules += [
            config.PortRule(
                named.port,
                named.proto,
                address,
                named.remote_port,
                line=named.line,
                host=named.host,
            )
            for address in answers.get(named.host, ())
            if address.version in families
        ]
    for named_fallback in destinations.named_fallbacks:
        fallbacks += [
            config.Fallback(address, line=named_fallback.line, host=named_fallback.host)
            for address in answers.get(named_fallback.host, ())
            if address.version in families
        ]
    return config.Destinations(tuple(rules), tuple(fallbacks))


def resolve_config(
    cfg: config.Config, answers: Mapping[str, Sequence[config.IPAddress]]
) -> config.Config:
    """``cfg`` with its names replaced by ``answers`` (see `substitute`)."""
    if not cfg.destinations.named and not cfg.destinations.named_fallbacks:
        return cfg
    destinations = substitute(cfg.destinations, answers, cfg.families())
    return dataclasses.replace(cfg, destinations=destinations)


def resolve_now(cfg: config.Config, resolver: Resolver) -> config.Config:
    """Resolve every name of ``cfg`` now; the first failure raises (the init container's way)."""
    answers = {
        host: resolver.resolve(host, cfg.families()).addresses
        for host in cfg.destinations.hosts()
    }
    return resolve_config(cfg, answers)
