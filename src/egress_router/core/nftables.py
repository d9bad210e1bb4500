"""The objects of an nftables table (chain, set, map, ct timeout), each writing its own text.

`ruleset.render_nftables` builds a `Table` of these objects and asks it for its transaction
(``add table``/``delete table``/definition: an atomic replacement); the text is what the
goldens hold, byte for byte. The other direction (nft's listing, and a transaction applied
to a table) is `egress_router.core.listing` (`parse_table`, `apply_script`, `dump`), which the
fake nft keeps as its state. Pure: objects in, text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

_IN = "\t"  # one level: an object in the table
_IN2 = "\t\t"  # two levels: a statement in an object


def _header(kind: str, name: str, comment: str | None) -> str:
    return f"{_IN}{kind} {name} {{" + (f"  # {comment}" if comment else "")


@dataclass
class Chain:
    """A chain: a base chain's ``type ... hook ...; policy ...;`` line, then its rules."""

    name: str
    hook: str | None = None
    rules: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = [f"{_IN2}{self.hook}"] if self.hook else []
        return [
            _header("chain", self.name, None), *head, *(f"{_IN2}{r}" for r in self.rules),
            f"{_IN}}}",
        ]


@dataclass
class Set:
    """A named set (with per-element counters); its elements on one line."""

    name: str
    type: str
    comment: str | None = None
    counter: bool = True
    elements: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [_header("set", self.name, self.comment), f"{_IN2}type {self.type}"]
        if self.counter:
            out.append(f"{_IN2}counter")
        if self.elements:
            out.append(f"{_IN2}elements = {{ {', '.join(self.elements)} }}")
        return [*out, f"{_IN}}}"]


@dataclass
class Map:
    """A named map (or verdict map); one element a line, as a rule a line reads."""

    name: str
    type: str
    elements: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [_header("map", self.name, None), f"{_IN2}type {self.type}"]
        if self.elements:
            out += [f"{_IN2}elements = {{", *(f"{_IN2}\t{e}," for e in self.elements), f"{_IN2}}}"]
        return [*out, f"{_IN}}}"]


@dataclass
class CtTimeout:
    """A conntrack timeout policy object."""

    name: str
    protocol: str
    l3proto: str
    policy: str
    comment: str | None = None

    def lines(self) -> list[str]:
        return [
            _header("ct timeout", self.name, self.comment),
            f"{_IN2}protocol {self.protocol}",
            f"{_IN2}l3proto {self.l3proto}",
            f"{_IN2}policy = {{ {self.policy} }}",
            f"{_IN}}}",
        ]


Object = Chain | Set | Map | CtTimeout


@dataclass
class Table:
    """A table and its objects, in the order they are written."""

    family: str
    name: str
    objects: list[Object] = field(default_factory=list)

    def add(self, *objects: Object) -> None:
        self.objects += objects

    def get(self, kind: type[Object], name: str) -> Object | None:
        return next((o for o in self.objects if isinstance(o, kind) and o.name == name), None)

    def definition(self) -> list[str]:
        """``table F N { ... }``: the objects, a blank line between two."""
        out = [f"table {self.family} {self.name} {{"]
        for index, obj in enumerate(self.objects):
            out += ([""] if index else []) + obj.lines()
        return [*out, "}"]

    def replacement(self, comments: Sequence[str] = ()) -> str:
        """One ``nft -f`` transaction that replaces the table atomically (nothing else)."""
        return "\n".join([
            *comments,
            f"add table {self.family} {self.name}",
            f"delete table {self.family} {self.name}",
            *self.definition(),
        ]) + "\n"
