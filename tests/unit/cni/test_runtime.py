"""The spec-level driver (cnirun) reads a NetworkAttachmentDefinition."""

from __future__ import annotations

import json
from pathlib import Path

from egress_router.cni import runtime as cnirun
from support.cni import CONF

# ------------------------------------------------------------------ the helper and the script


def test_cnirun_reads_a_network_attachment_definition(tmp_path: Path) -> None:
    nad = tmp_path / "nad.yaml"
    nad.write_text(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n"
        "metadata:\n  name: egress\nspec:\n  config: '" + json.dumps(CONF) + "'\n"
    )
    assert cnirun.read_network_config(nad) == CONF
    conflist = tmp_path / "list.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "l", "plugins": [
        {"type": "egress-router", "ip": CONF["ip"]}]}))
    assert cnirun.read_network_config(conflist) == {"type": "egress-router", "ip": CONF["ip"],
                                            "cniVersion": "1.0.0", "name": "l"}
