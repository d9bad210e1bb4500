"""A dual-stack pair: the IPv6 reserved address moves with the IPv4 one keepalived elects on.

IPv6-only pairs are refused (README, "High availability"); a dual-stack pair
elects over IPv4 and carries its IPv6 reserved address along
(``virtual_ipaddress_excluded``). Who holds each address is read with
``ip -j addr`` in each router's namespace; the IPv4 traffic through the new
active is checked at the destination as in test_ha.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egress_router.lab import ha as halab

from .conftest import new_prefix, require_privileged

pytestmark = pytest.mark.privileged

FAILOVER_BOUND = 1.5  # s, as in test_ha.py


@pytest.fixture(scope="module")
def pair() -> Iterator[halab.HaLab]:
    require_privileged()
    with halab.running(new_prefix(), dual=True) as lab:
        yield lab


def _both(lab: halab.HaLab) -> tuple[list[str], list[str]]:
    return halab.holders(lab), halab.holders(lab, halab.RESERVED6)


def test_the_ipv6_address_moves_with_the_ipv4_one_and_stays_on_return(
    pair: halab.HaLab,
) -> None:
    active = halab.settle(pair)
    standby = "r2" if active == "r1" else "r1"
    halab.standby_ready(pair, standby)
    halab.wait_for(lambda: _both(pair) == ([active], [active]), 5.0,
                   "see both reserved addresses on the active only")
    client = halab.start_client(pair, 120)
    try:
        halab.wait_ready(pair, client, active)
        trial = halab.trial(pair, client, "sigkill")
    finally:
        client.close()
    assert trial.took_over == standby and trial.failover < FAILOVER_BOUND, trial
    assert trial.switchovers_on_return == 0, trial
    # The old active is back as a standby: neither address there, both on the new active.
    assert _both(pair) == ([standby], [standby])
