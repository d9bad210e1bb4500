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
    # What an element stands for, beside its text (not written): an update keeps an element
    # (and its counters) only when both stay the same. Empty: the text alone.
    labels: list[object] = field(default_factory=list, compare=False)

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


def _kind(obj: Object) -> str:
    return "ct timeout" if isinstance(obj, CtTimeout) else type(obj).__name__.lower()


def _element_key(element: str) -> str:
    """A map element's key (``tcp . 80`` of ``tcp . 80 : 203.0.113.25 . 80``)."""
    return element.split(" : ", 1)[0]


def _declaration(obj: Set | Map) -> str:
    flags = " counter;" if isinstance(obj, Set) and obj.counter else ""
    return f"{{ type {obj.type};{flags} }}"


def update(old: Table, new: Table) -> list[str]:
    """The commands that turn ``old`` into ``new`` in one transaction (their difference).

    What stays the same is not touched: an element that is in both (by its text and, for a
    set, its `Set.labels` entry) keeps its counters. In order: chains whose rules change are
    flushed first (they may refer to what goes), gone elements are deleted (a gone map's
    too: a verdict map's elements hold the chains they jump to), then gone chains, then gone
    maps and sets; new maps, sets and chains are added before the elements that refer to
    them, and the rules last.
    """
    table = f"{new.family} {new.name}"
    before = {(_kind(o), o.name): o for o in old.objects}
    after = {(_kind(o), o.name): o for o in new.objects}
    head: list[str] = []
    deletes: list[str] = []
    declares: list[str] = []
    adds: list[str] = []
    tail: list[str] = []
    for key, obj in after.items():
        was = before.get(key)
        if isinstance(obj, Chain):
            if was is None:
                declares.append(f"add chain {table} {obj.name}")
            elif was == obj:
                continue
            else:
                head.append(f"flush chain {table} {obj.name}")
            tail += [f"add rule {table} {obj.name} {rule}" for rule in obj.rules]
        elif isinstance(obj, Set | Map):
            kind = _kind(obj)
            if was is None:
                declares.insert(0, f"add {kind} {table} {obj.name} {_declaration(obj)}")
                old_ids: list[object] = []
            else:
                assert isinstance(was, Set | Map)
                old_ids = _identities(was)
            new_ids = _identities(obj)
            gone = [e for e, i in zip(_elements(was), old_ids, strict=True) if i not in new_ids]
            fresh = [e for e, i in zip(obj.elements, new_ids, strict=True) if i not in old_ids]
            if gone:
                keys = ", ".join(_element_key(e) for e in gone)
                deletes.append(f"delete element {table} {obj.name} {{ {keys} }}")
            if fresh:
                adds.append(f"add element {table} {obj.name} {{ {', '.join(fresh)} }}")
    removed = [was for key, was in before.items() if key not in after]
    for was in removed:  # a verdict map's elements first: they hold the chains they jump to
        if isinstance(was, Set | Map) and was.elements:
            keys = ", ".join(_element_key(e) for e in was.elements)
            deletes.append(f"delete element {table} {was.name} {{ {keys} }}")
    deletes += [f"delete chain {table} {o.name}" for o in removed if isinstance(o, Chain)]
    deletes += [f"delete {_kind(o)} {table} {o.name}" for o in removed if isinstance(o, Set | Map)]
    return [*head, *deletes, *declares, *adds, *tail]


def _elements(obj: Set | Map | None) -> list[str]:
    return [] if obj is None else obj.elements


def _identities(obj: Set | Map) -> list[object]:
    if isinstance(obj, Set) and obj.labels:
        return list(zip(obj.elements, obj.labels, strict=True))
    return list(obj.elements)
