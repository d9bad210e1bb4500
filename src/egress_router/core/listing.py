"""The one place that knows what the kernel's tools print: ``nft list``, ``iptables-save``, ``ip``.

`wait` (drift and metrics), `status` (the report) and CNI CHECK all read the kernel back and
compare it with what the configuration wants. They read it through these parsers only, the way
knftables keeps the nft text format in one file for both directions (and its Fake reuses it), so
a change in a tool's output is fixed once and the three readers can never disagree about it.

Pure functions of text (``ip -j`` JSON into `egress_router.core.state`): the processes that
produce the text live in ``egress_router.kernel``.
Text rather than ``nft -j`` for the nftables listing: the long-running ``wait`` process reads
a 10,000-rule table every few seconds, and as JSON that is tens of thousands of Python objects
instead of one string (and the counters are read as a stream of lines, never held whole).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from egress_router.core import config, digest, plan, ruleset, state

# ----------------------------------------------------------------------------- nft list table

#: The head of a block inside ``table inet egress_router { ... }``, as nft prints it.
BLOCK_HEADER = re.compile(r"^\s*(chain|map|set|flowtable) (\S+) \{")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_ELEMENTS = re.compile(r"elements = \{([^}]*)\}")
_SET_ELEMENT = re.compile(r"(tcp|udp|sctp) \. (\d+) counter packets (\d+) bytes (\d+)")
_PROTO_INDEX = {p: i for i, p in enumerate(config.Proto)}
_PROTOCOLS = {p.value for p in config.Proto}
_NUMGEN_TARGET = re.compile(r"(\d+) : ([0-9a-fA-F.:]+)(?: \. (\d+))?")
_DNAT = re.compile(r"dnat ip6? to (?:numgen inc mod \d+ map \{ ([^}]*) \}|([0-9a-fA-F.:]+))")
_SNAT = re.compile(r"\bsnat ip6? to (?:jhash [^{]* map \{ ([^}]*) \}|([0-9a-fA-F.:]+)(?![\w:.-]))")


@dataclass
class Block:
    """One chain, map, set or flowtable: its statements in order and its elements as listed."""

    kind: str
    name: str
    lines: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)


@dataclass
class Listing:
    """``nft list table`` text as blocks, keyed ``"<kind> <name>"`` (``"chain forward"``)."""

    blocks: dict[str, Block] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Block | None:
        return self.blocks.get(f"{kind} {name}")

    def lines(self, kind: str, name: str) -> list[str]:
        block = self.get(kind, name)
        return [] if block is None else block.lines

    def elements(self, kind: str, name: str) -> list[str]:
        block = self.get(kind, name)
        return [] if block is None else block.elements

    def of_kind(self, kind: str) -> dict[str, Block]:
        return {b.name: b for b in self.blocks.values() if b.kind == kind}


def strip_counters(text: str) -> str:
    """``counter packets 3 bytes 180`` -> ``counter``: the values change with traffic."""
    return _COUNTER.sub("counter", text)


def _split_elements(inner: str) -> list[str]:
    return [e.strip() for e in inner.split(",") if e.strip()]


def parse_table(text: str) -> Listing:
    """``nft list table`` text as blocks: statement lines in order, elements split out.

    Elements are separated from the statements because nft wraps them over lines by width;
    counter values are kept (`strip_counters` drops them for comparisons).
    """
    listing = Listing()
    current: Block | None = None
    pending: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if pending is not None:
            pending.append(line)
            if line.endswith("}"):
                joined = " ".join(pending)
                assert current is not None
                inner = joined[joined.index("{") + 1 : joined.rindex("}")]
                current.elements += _split_elements(inner)
                pending = None
            continue
        header = BLOCK_HEADER.match(line)
        if header:
            current = Block(header.group(1), header.group(2))
            listing.blocks[f"{current.kind} {current.name}"] = current
            continue
        if line == "}":
            current = None
            continue
        if current is None:
            continue  # the table line itself
        if line.startswith("elements = {"):
            pending = [line]
            if line.endswith("}"):
                current.elements += _split_elements(line[line.index("{") + 1 : line.rindex("}")])
                pending = None
            continue
        current.lines.append(line)
    return listing


# ------------------------------------------------------------------ the table as a model
# The same blocks in the other direction: a transaction applied to a `Listing`, and a
# `Listing` written back as ``nft list table`` text. The fake nft (kernel/nft.py) keeps its
# table this way, so a test reads back the whole table after any sequence of applies (a
# whole replacement or an in-place update), as from the kernel. ``ct timeout`` objects are
# not blocks here (nothing compares them).

_COMMAND = re.compile(
    r"^(add|delete|flush) (table|chain|set|map|rule|element) (\S+) (\S+)(?: (\S+))?(.*)$"
)


def _is_header(line: str) -> bool:
    """A chain's ``type ... hook ...;`` and ``policy ...;`` lines survive ``flush chain``."""
    return line.endswith(";")


def _element_key(element: str) -> str:
    return element.split(" : ", 1)[0].split(" counter", 1)[0].strip()


def _braced(rest: str) -> str:
    rest = rest.strip()
    return rest[rest.index("{") + 1 : rest.rindex("}")] if "{" in rest else ""


def apply_script(table: Listing | None, script: str, name: str) -> Listing | None:
    """``table`` (None: absent) after the ``nft -f`` transaction ``script`` on table ``name``.

    Knows the forms the router writes: a whole replacement (``add table``, ``delete table``,
    ``table ... { ... }``) and the in-place update's commands (``flush chain``, ``add rule``,
    ``add``/``delete element``, ``add``/``delete chain``/``map``/``set``). Other tables'
    commands are refused (ValueError), as a fake must not pretend to run what it cannot.
    """
    lines = script.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("table ") and line.endswith("{"):
            depth, body = 1, [line]
            while depth and index < len(lines):
                body.append(lines[index])
                depth += lines[index].count("{") - lines[index].count("}")
                index += 1
            defined = parse_table("\n".join(body))
            table = table or Listing()
            for key, block in defined.blocks.items():
                have = table.blocks.setdefault(key, Block(block.kind, block.name))
                have.lines += block.lines
                have.elements += block.elements
            continue
        match = _COMMAND.match(line)
        if match is None or f"{match.group(3)} {match.group(4)}" != name:
            raise ValueError(f"cannot apply {line!r} to a model of table {name}")
        verb, kind, obj, rest = match.group(1), match.group(2), match.group(5), match.group(6)
        if kind == "table":
            table = (table or Listing()) if verb == "add" else None
            continue
        if table is None:
            raise ValueError(f"cannot apply {line!r}: table {name} does not exist")
        if kind == "rule":
            table.blocks[f"chain {obj}"].lines.append(rest.strip())
        elif kind == "element":
            block = table.blocks[f"{_kind_of(table, obj)} {obj}"]
            given = _split_elements(_braced(rest))
            if verb == "add":
                block.elements += given
            else:
                gone = {_element_key(e) for e in given}
                block.elements = [e for e in block.elements if _element_key(e) not in gone]
        elif verb == "add":
            block = table.blocks.setdefault(f"{kind} {obj}", Block(kind, obj))
            inner = _braced(rest).strip()
            if inner and not block.lines:  # a set's or map's declarations, one a line
                parts = [inner] if kind == "chain" else inner.split(";")
                block.lines += [part.strip() for part in parts if part.strip()]
        elif verb == "delete":
            del table.blocks[f"{kind} {obj}"]
        else:  # flush
            block = table.blocks[f"{kind} {obj}"]
            if kind == "chain":
                block.lines = [x for x in block.lines if _is_header(x)]
            else:
                block.elements = []
    return table


def _kind_of(table: Listing, name: str) -> str:
    return "map" if f"map {name}" in table.blocks else "set"


def dump(table: Listing, name: str) -> str:
    """``table`` as ``nft list table`` prints it (one element a line), readable by `parse_table`."""
    out = [f"table {name} {{"]
    for block in table.blocks.values():
        out.append(f"\t{block.kind} {block.name} {{")
        out += [f"\t\t{line}" for line in block.lines]
        if block.elements:
            out.append("\t\telements = { " + ",\n\t\t\t     ".join(block.elements) + " }")
        out.append("\t}")
    return "\n".join([*out, "}"]) + "\n"


def element_key(text: str) -> ruleset.Key | None:
    """The rule key of an element (``tcp . 80`` or ``tcp . 80 : ...``), None if not one."""
    parts = text.split()
    if len(parts) >= 3 and parts[0] in _PROTOCOLS and parts[1] == "." and parts[2].isdigit():
        return config.Proto(parts[0]), int(parts[2])
    return None


def numgen_targets(text: str) -> list[tuple[str, str | None]]:
    """(address, port or None) of each entry of a ``numgen inc mod N map { 0 : a . p, ... }``."""
    return [(address, port or None) for _i, address, port in _NUMGEN_TARGET.findall(text)]


def dnat_addresses(statement: str) -> list[str]:
    """The addresses a ``dnat ip[6] to ...`` statement sends to (one, or a numgen spread)."""
    match = _DNAT.search(statement)
    if match is None:
        return []
    if match.group(2):
        return [match.group(2)]
    return [address for address, _port in numgen_targets(match.group(1))]


def snat_addresses(statement: str) -> list[str]:
    """The source addresses a ``snat ip[6] to ...`` statement writes (one, or a jhash pool)."""
    match = _SNAT.search(statement)
    if match is None:
        return []
    if match.group(2):
        return [match.group(2)]
    return [address for address, _port in numgen_targets(match.group(1))]


# set name -> counter_key(proto, port) -> packets << 64 | bytes. Plain ints rather
# than tuples: 20,000 of them are built at every scrape of a 10,000-rule router.
Counters = dict[str, dict[int, int]]


def counter_key(proto: config.Proto, port: int) -> int:
    return _PROTO_INDEX[proto] << 16 | port


def read_counters(lines: Iterable[str]) -> Counters:
    """Element counters of every set in ``nft list table`` output, read line by line.

    A stream, not `parse_table`: at every scrape, without holding the whole listing.
    """
    found: Counters = {}
    current: dict[int, int] | None = None
    for line in lines:
        header = BLOCK_HEADER.match(line)
        if header:
            current = found.setdefault(header.group(2), {}) if header.group(1) == "set" else None
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is None:
            continue
        for m in _SET_ELEMENT.finditer(line):
            key = _PROTO_INDEX[config.Proto(m.group(1))] << 16 | int(m.group(2))
            current[key] = int(m.group(3)) << 64 | int(m.group(4))
    return found


def lookup(counters: Counters, name: str, key: ruleset.Key) -> tuple[int, int] | None:
    """(packets, bytes) of ``key`` in set ``name``, None when it has no element."""
    value = counters.get(name, {}).get(counter_key(*key))
    return None if value is None else (value >> 64, value & (2**64 - 1))


def fingerprint_nftables(listing: str) -> str:
    """A digest of ``nft -s list table`` output that changes only when the rules do.

    Elements of hash sets are listed in hash order, which may change while the
    content does not (rehashing as the set grows), so they are sorted first.
    """

    def ordered(match: re.Match[str]) -> str:
        items = sorted(item.strip() for item in match.group(1).split(","))
        return "elements = { " + ", ".join(items) + " }"

    return digest.sha256_hex(_ELEMENTS.sub(ordered, listing).encode())


# ----------------------------------------------------------------------------- iptables-save


def iptables_jumps(saved: str) -> set[tuple[str, str, str]]:
    """Our jumps found in an ``iptables-save`` dump (table, built-in chain, our chain)."""
    found: set[tuple[str, str, str]] = set()
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        for tbl, builtin, ours in ruleset.IPT_JUMPS:
            if tbl == table and line.strip() == f"-A {builtin} -j {ours}":
                found.add((tbl, builtin, ours))
    return found


def iptables_dnat_targets(saved: str, proto: config.Proto, port: int) -> list[str]:
    """The ``--to-destination`` of our DNAT lines for ``proto`` port ``port``, in order."""
    return [
        line.rsplit("--to-destination ", 1)[-1]
        for line in saved.splitlines()
        if line.startswith(f"-A {ruleset.IPT_PREROUTING} ")
        and f"-p {proto.value}" in line and f"--dport {port} " in line
    ]


def fingerprint_iptables(dumps: Iterable[str]) -> str | None:
    """A digest of our chains and jumps in ``iptables-save`` dumps (None: no rules of ours)."""
    ours = [
        re.sub(r"^\[\d+:\d+\] ", "", line)
        for dump in dumps
        for line in dump.splitlines()
        if line.startswith("*") or ("EGRESS-ROUTER-" in line and line.startswith(("-A ", "[")))
    ]
    if not any("EGRESS-ROUTER-" in line for line in ours):
        return None
    return digest.sha256_hex("\n".join(ours).encode())


# ----------------------------------------------------------------------------- ip -j

# `ip -j` prints scopes and tables by name; the model keeps the kernel's numbers.
_SCOPES = {"global": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
_TABLES = {"main": state.MAIN_TABLE, "local": 255, "default": 253}
_FAMILY_NAMES = {"inet": 4, "inet6": 6}


def parse_ip_addr(dump: list[dict[str, Any]]) -> tuple[list[state.Link], list[state.Address]]:
    """Links and addresses from ``ip -j -d addr show`` (one entry per link, with its addr_info)."""
    index_of = {str(entry["ifname"]): int(entry["ifindex"]) for entry in dump}
    links: list[state.Link] = []
    addresses: list[state.Address] = []
    for entry in dump:
        index = int(entry["ifindex"])
        info = entry.get("linkinfo") or {}
        kind = info.get("info_kind")
        mode = (info.get("info_data") or {}).get("mode") if kind == "macvlan" else None
        # The parent is named when it is in the same namespace, numbered when it is not.
        parent = entry.get("link_index")
        if parent is None and entry.get("link") is not None:
            parent = index_of.get(str(entry["link"]))
        links.append(state.Link(
            index, str(entry["ifname"]), "UP" in entry.get("flags", []),
            str(entry.get("address", "")), int(entry.get("mtu", 0)),
            None if kind is None else str(kind), None if mode is None else str(mode),
            None if parent is None else int(parent),
        ))
        for addr in entry.get("addr_info", []):
            if addr.get("family") not in _FAMILY_NAMES or "local" not in addr:
                continue
            interface = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}")
            scope = _SCOPES.get(str(addr.get("scope", "global")), state.RT_SCOPE_UNIVERSE)
            addresses.append(state.Address(index, interface, scope))
    return links, addresses


def parse_ip_route(
    dump: list[dict[str, Any]], family: int, index_of: dict[str, int]
) -> list[state.Route]:
    """Main-table routes of one family from ``ip -j [-6] route show table main``."""
    routes: list[state.Route] = []
    for entry in dump:
        dst = str(entry["dst"])
        if dst == "default":
            dst = "0.0.0.0/0" if family == 4 else "::/0"
        gateway = ipaddress.ip_address(entry["gateway"]) if "gateway" in entry else None
        # ip omits "type" for unicast routes and names the others (unreachable, ...).
        kind = state.RTN_UNICAST if entry.get("type", "unicast") == "unicast" else 0
        routes.append(state.Route(
            family, ipaddress.ip_network(dst), gateway,
            index_of.get(str(entry.get("dev", ""))), state.MAIN_TABLE, kind,
        ))
    return routes


def parse_ip_rule(dump: list[dict[str, Any]], family: int) -> list[tuple[int, state.RuleKey]]:
    """Our policy rules (`plan.RULE_PRIORITY` and the next three) from ``ip -j rule show``."""
    rules: list[tuple[int, state.RuleKey]] = []
    for entry in dump:
        priority = int(entry.get("priority", 0))
        if not plan.RULE_PRIORITY <= priority <= plan.RULE_PRIORITY + 3:
            continue
        table = str(entry.get("table", ""))
        src = entry.get("src")
        rules.append((family, (
            priority,
            entry.get("iif"),
            None if src in (None, "all") else str(src),
            _TABLES.get(table) or int(table),
            # The JSON key is "suppress_prefixlen" (the text output says "...length").
            entry.get("suppress_prefixlen") == 0,
        )))
    return rules
