"""The lab name server answers from its records."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode

from egress_router.lab import nameserver as labdns


def test_lab_dns_answers_from_its_records() -> None:
    records = {"api.lab.test": {"A": ["203.0.113.25", "203.0.113.26"], "ttl": 2}}
    query = dns.message.make_query("API.lab.test.", "A")
    wire, entry = labdns.answer(query.to_wire(), records)
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.AA
    assert sorted(r.address for r in response.answer[0]) == ["203.0.113.25", "203.0.113.26"]
    assert response.answer[0].ttl == 2
    assert entry == {"name": "api.lab.test", "type": "A", "answer": ["203.0.113.25",
                                                                     "203.0.113.26"], "ttl": 2}
    wire, _ = labdns.answer(dns.message.make_query("api.lab.test.", "AAAA").to_wire(), records)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NOERROR
    assert dns.message.from_wire(wire).answer == []
    wire, entry = labdns.answer(dns.message.make_query("gone.lab.test.", "A").to_wire(), records)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NXDOMAIN
    assert entry["rcode"] == "NXDOMAIN"
