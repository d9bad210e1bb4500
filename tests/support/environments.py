"""The router environments several test files share, defined once.

`NAMED_ENV`: one IPv4 source, rules by address (with a remote port, UDP), one by DNS name, and a
fallback: the shape `drift`, `resolve` and `status` are all tested against (the golden
kernel listing `kernel-listing.nft` is this configuration applied). `BASE_ENV`: the variables
the harness of the waiting container starts from, before a test adds its rules.
"""

from __future__ import annotations

NAMED_ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n"
        "443 tcp multi.lab.test\n203.0.113.27\n"
    ),
}
BASE_ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_ANNOUNCE_COUNT": "1",
}
