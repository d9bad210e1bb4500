"""The table's objects write their own text, and the one parser of nft text reads it back."""

from __future__ import annotations

import pytest

from egress_router.core import config, listing, nftables, ruleset
from support.golden import DUAL_ENV, SEED_ENV

POOL_HA = {
    "EGRESS_SOURCE": "192.168.12.99/24,192.168.12.100/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n53 udp 203.0.113.26 5353\n203.0.113.27\n",
    "EGRESS_ROUTER_HA": "vrrp",
    "EGRESS_HA_VRID": "7",
}


@pytest.mark.parametrize("env", [SEED_ENV, DUAL_ENV, POOL_HA])
def test_every_object_reads_back_as_the_block_it_wrote(env: dict[str, str]) -> None:
    cfg = config.load_config(env)
    table = ruleset.table_of(cfg)
    assert ruleset.render_nftables(cfg) == table.replacement(ruleset._header_comments(cfg))
    parsed = listing.parse_table(ruleset.render_nftables(cfg))
    kinds = {nftables.Chain: "chain", nftables.Set: "set", nftables.Map: "map"}
    written = [o for o in table.objects if not isinstance(o, nftables.CtTimeout)]
    assert list(parsed.blocks) == [f"{kinds[type(o)]} {o.name}" for o in written]
    for obj in written:
        block = parsed.get(kinds[type(obj)], obj.name)
        assert block is not None
        if isinstance(obj, nftables.Chain):
            assert block.lines == [*([obj.hook] if obj.hook else []), *obj.rules]
        elif isinstance(obj, nftables.Set):
            assert block.lines == [f"type {obj.type}", "counter"]
            assert block.elements == obj.elements
        else:
            assert block.lines == [f"type {obj.type}"]
            assert block.elements == obj.elements


def test_a_table_is_replaced_whole_and_written_in_order() -> None:
    table = nftables.Table("inet", "example")
    table.add(nftables.Set("s", "inet_service", "ports", elements=["80", "443"]),
              nftables.Chain("c", "type filter hook input priority filter; policy accept;",
                             ["tcp dport @s accept"]))
    assert table.replacement(["# generated"]) == (
        "# generated\nadd table inet example\ndelete table inet example\n"
        "table inet example {\n"
        "\tset s {  # ports\n\t\ttype inet_service\n\t\tcounter\n\t\telements = { 80, 443 }\n\t}\n"
        "\n"
        "\tchain c {\n\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\ttcp dport @s accept\n\t}\n"
        "}\n"
    )
    assert table.get(nftables.Chain, "c") is table.objects[1]
    assert table.get(nftables.Map, "c") is None
