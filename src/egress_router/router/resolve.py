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

DNS is not trusted more than the configuration: every address of an answer
goes through the same rule as a literal destination
(`config.destination_problem`: the router's own source and gateway, the egress
subnet's network and broadcast addresses, the pod network, loopback,
link-local, multicast, broadcast, unspecified, IPv4-mapped and reserved).
A refused address never reaches the ruleset; it is logged once (per name and
address, until the answer changes) and counted (``refused`` of a `Refresh`,
the ``dns_answers_refused`` metric). An answer with nothing left is refused as
a whole and the name keeps its last good addresses.
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
    """The addresses of one name (sorted) and the seconds until asking again."""

    addresses: tuple[config.IPAddress, ...]
    ttl: float


Policy = Callable[[config.IPAddress], str | None]
"""Why an address may not be a destination (None: it may); `config.destination_problem`."""


def policy_for(
    cfg: config.Config, pod_networks: Sequence[config.IPNetwork] = ()
) -> Policy:
    """The destination rule of ``cfg`` (its own addresses, its subnet, the pod network)."""
    networks = tuple(pod_networks)

    def problem(address: config.IPAddress) -> str | None:
        return config.destination_problem(address, cfg.sources, cfg.gateways, networks)

    return problem


@dataclass(frozen=True)
class Refused:
    """One address of an answer that may not be a destination, and why."""

    host: str
    address: config.IPAddress
    why: str


def screen(
    host: str, addresses: Iterable[config.IPAddress], policy: Policy
) -> tuple[tuple[config.IPAddress, ...], tuple[Refused, ...]]:
    """Split an answer into the addresses that may be destinations and those refused."""
    good: list[config.IPAddress] = []
    refused: list[Refused] = []
    for address in addresses:
        why = policy(address)
        if why is None:
            good.append(address)
        else:
            refused.append(Refused(host, address, why))
    return _ordered(good), tuple(refused)


def refused_error(host: str, refused: Sequence[Refused]) -> ResolveError:
    """Every address of ``host``'s answer was refused: the answer as a whole is."""
    why = "; ".join(r.why for r in refused)
    return ResolveError(
        f"cannot use {host}: every address it resolves to is refused as a destination ({why})"
    )


class Resolver(Protocol):
    """Looks names up; raises `ResolveError`."""

    def resolve(self, host: str, families: Sequence[int]) -> Answer: ...


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
        """Keep the wanted families and bound the TTL (separate from the lookup for unit tests).

        Which addresses may be destinations is the caller's `Policy` (`screen`):
        a refused address has to be counted and logged, not silently dropped here.
        """
        wanted = _ordered(a for a in addresses if a.version in families)
        if not wanted:
            records = " or ".join(_RECORD[f] for f in families)
            raise ResolveError(f"cannot resolve {host}: no {records} record")
        return Answer(wanted, min(max(ttl, self.min_ttl), self.max_ttl))


@dataclass
class _Entry:
    addresses: tuple[config.IPAddress, ...] = ()
    due: float = 0.0
    error: str | None = None
    refused: frozenset[config.IPAddress] = frozenset()  # already logged


@dataclass(frozen=True)
class Refresh:
    """What one round of lookups did: names changed, names failed (with why), addresses refused."""

    changed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    refused: tuple[Refused, ...] = ()


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
        self,
        hosts: Sequence[str],
        families: Sequence[int],
        *,
        force: bool = False,
        policy: Policy = config.destination_problem,
    ) -> Refresh:
        """Look up the names that are due (all of them with ``force``); forget the others.

        Every answer is screened by ``policy`` (see the module docstring); the
        default holds only what needs no configuration (loopback, link-local ...).
        """
        for gone in set(self._entries) - set(hosts):
            del self._entries[gone]
        changed: list[str] = []
        failed: list[tuple[str, str]] = []
        refused: list[Refused] = []
        for host in hosts:
            entry = self._entries.setdefault(host, _Entry())
            now = self._clock()
            if not force and entry.due > now:
                continue
            try:
                answer = self._resolver.resolve(host, families)
                addresses, bad = screen(host, answer.addresses, policy)
                refused += bad
                self._log_refused(entry, bad)
                if not addresses:
                    raise refused_error(host, bad)
            except ResolveError as err:
                if entry.error != str(err) or not entry.refused:
                    kept = ", ".join(str(a) for a in entry.addresses) or "none"
                    log.warning("%s; keeping its last good addresses (%s)", err, kept)
                entry.error = str(err)
                entry.due = now + self._retry
                failed.append((host, str(err)))
                continue
            entry.error = None
            entry.due = now + answer.ttl
            answer = Answer(addresses, answer.ttl)
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
        return Refresh(tuple(changed), tuple(failed), tuple(refused))

    @staticmethod
    def _log_refused(entry: _Entry, refused: Sequence[Refused]) -> None:
        """Log each refused address once, until it leaves the name's answers."""
        now = frozenset(r.address for r in refused)
        for item in refused:
            if item.address not in entry.refused:
                log.warning(
                    "refusing DNS answer %s for %s: %s; it does not reach the rules",
                    item.address, item.host, item.why,
                )
        entry.refused = now

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


def resolve_now(
    cfg: config.Config, resolver: Resolver, policy: Policy | None = None
) -> config.Config:
    """Resolve every name of ``cfg`` now; the first failure raises (the init container's way).

    Refused addresses are logged and left out (``policy``: `policy_for` ``cfg``
    by default); a name whose every address is refused raises.
    """
    rule = policy or policy_for(cfg)
    answers: dict[str, tuple[config.IPAddress, ...]] = {}
    for host in cfg.destinations.hosts():
        answer = resolver.resolve(host, cfg.families())
        addresses, refused = screen(host, answer.addresses, rule)
        if not addresses:
            raise refused_error(host, refused)  # names every refused address itself
        for item in refused:
            log.warning(
                "refusing DNS answer %s for %s: %s; it does not reach the rules",
                item.address, host, item.why,
            )
        answers[host] = addresses
    return resolve_config(cfg, answers)
