"""An HA replica's VRID check at ADD: refuse a VRID another VRRP group on the egress L2 uses.

Run in the pod (see `egress_router.cni.pod`), on the new macvlan, before the data path.
"""

from __future__ import annotations

import logging

from egress_router.cni import errors
from egress_router.cni.links import (
    Answer,
)
from egress_router.core import config, ha, plan
from egress_router.kernel import netlink, vrrp

log = logging.getLogger(__name__)

def _vrid_clash(cfg: config.Config, links: netlink.Netlink) -> Answer | None:
    """An HA replica's VRID another VRRP group uses, refused before the data path (in the pod).

    The macvlan is hardened and brought up to listen (`ha.CLASH_WINDOW`,
    as ``wait`` does); a refusal leaves it to ADD's undo steps.
    """
    assert cfg.ha is not None
    settings = cfg.ha
    try:
        links.apply(plan.harden_egress(cfg))
        links.apply(plan.LinkUp(cfg.egress_interface))
    except Exception as err:  # the engine's setup reports the same failure with its context
        log.debug("cannot raise %s for the VRID check: %s", cfg.egress_interface, err)
        return None
    found: list[str] = []

    def seen(advert: ha.Advert) -> bool:
        reason = ha.clash(advert, settings, cfg)
        if reason is not None:
            found.append(reason)
        return reason is not None

    try:
        vrrp.watch_adverts(cfg.egress_interface, ha.CLASH_WINDOW, seen)
    except vrrp.VrrpError as err:
        return Answer(code=errors.ROUTER_SETUP_FAILED, msg=str(err))
    if not found:
        return None
    return Answer(code=errors.INVALID_CONFIG,
                   msg=str(ha.clash_error(found[0], settings.vrid, "ha.vrid")))
