"""The EGRESS_ROUTER_* settings of the waiting container, parsed in core/config."""

from __future__ import annotations

import pytest

from egress_router.core import config


def test_settings_from_the_environment() -> None:
    assert config.parse_wait_settings({}) == config.WaitSettings()
    settings = config.parse_wait_settings({"EGRESS_ROUTER_RECONCILE_SECONDS": "0.5",
                                   "EGRESS_ROUTER_DNS_MIN_TTL": "1"})
    assert settings.reconcile == 0.5
    assert settings.dns_min_ttl == 1.0
    with pytest.raises(config.ConfigError) as caught:
        config.parse_wait_settings({"EGRESS_ROUTER_RECONCILE_SECONDS": "soon"})
    assert str(caught.value) == (
        "cannot parse EGRESS_ROUTER_RECONCILE_SECONDS: invalid value 'soon'; expected seconds "
        "from 0.2 to 3600"
    )
    with pytest.raises(config.ConfigError, match="EGRESS_ROUTER_DNS_MAX_TTL: is below"):
        config.parse_wait_settings(
            {"EGRESS_ROUTER_DNS_MIN_TTL": "60", "EGRESS_ROUTER_DNS_MAX_TTL": "10"}
        )
