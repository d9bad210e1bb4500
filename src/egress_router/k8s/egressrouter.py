"""An OpenShift ``EgressRouter`` (``egress-router render --from-egressrouter``) -> `RouterSpec`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from egress_router.core import config, ha
from egress_router.k8s.egressrouter_schema import (
    EGRESSROUTER_API_VERSION,
    EGRESSROUTER_KIND,
    EGRESSROUTER_SCHEMA,
)
from egress_router.k8s.fields import (
    Fields,
    Lines,
    check_families,
    check_image,
    check_name,
    check_namespace,
    extra_ports,
    finish,
)
from egress_router.k8s.spec import (
    DEFAULT_IMAGE,
    Attachment,
    Overrides,
    RouterSpec,
)
from egress_router.k8s.yaml_input import (
    load_yaml,
    schema_error,
    type_name,
)


def _cr_addresses(
    fields: Fields, addresses: Sequence[Mapping[str, str]]
) -> tuple[tuple[config.Source, ...], tuple[config.IPAddress, ...]]:
    """Sources and gateways of ``spec.addresses``; several of one family form a pool."""
    gateways: dict[int, config.IPAddress] = {}
    texts: list[str] = []
    for index, address in enumerate(addresses):
        field = f"spec.addresses[{index}]"
        (source,) = config.parse_sources(address["ip"], fields.name(f"{field}.ip"))
        if "gateway" not in address:
            raise fields.error(
                f"{field}.gateway",
                "is not set; egress-router does not guess the gateway: add the physical "
                "network's gateway",
            )
        gateway = config.parse_address(
            address["gateway"], fields.name(f"{field}.gateway"), what="gateway address"
        )
        if gateway.version != source.family:
            raise fields.error(
                f"{field}.gateway",
                f"is IPv{gateway.version} but ip is IPv{source.family}; expected the same family",
                address["gateway"],
            )
        first = gateways.setdefault(source.family, gateway)
        if first != gateway:
            raise fields.error(
                f"{field}.gateway",
                f"differs from the gateway of the first IPv{source.family} address ({first}); "
                f"the IPv{source.family} addresses form one source-address pool behind one "
                "gateway",
                address["gateway"],
            )
        texts.append(address["ip"])
    # The pool rules (one subnet, no repeats, bounded) are EGRESS_SOURCE's.
    sources = config.parse_sources(",".join(texts), fields.name("spec.addresses"))
    return sources, tuple(gateways[f] for f in sorted(gateways))


def _cr_lines(fields: Fields, redirect: Mapping[str, Any]) -> Lines:
    texts: list[str] = []
    paths: list[str] = []
    for index, rule in enumerate(redirect.get("redirectRules") or []):
        path = f"spec.redirect.redirectRules[{index}]"
        target = rule.get("targetPort", rule["port"])
        remote = f" {target}" if target != rule["port"] else ""
        texts.append(
            f"{rule['port']} {rule['protocol'].lower()} {rule['destinationIP']}{remote}"
            f"  # {path}"
        )
        paths.append(path)
    if "fallbackIP" in redirect:
        texts.append(f"{redirect['fallbackIP']}  # spec.redirect.fallbackIP")
        paths.append("spec.redirect.fallbackIP")
    if not texts:
        raise fields.error(
            "spec.redirect", "has neither redirectRules nor fallbackIP; nothing to redirect"
        )
    return Lines(
        fields, "spec.redirect", "".join(f"{t}\n" for t in texts), tuple(paths),
        {config.ENV_HTTP_PORT: "--http-port"},
    )


# The CRD has no field for a pair, and a spec field of our own would be pruned by the
# API server (or refused by the schema above): an annotation survives both.
CR_ANNOTATION_PREFIX = "egress-router/"
CR_HA_ANNOTATION = f"{CR_ANNOTATION_PREFIX}ha-vrid"
_CR_ANNOTATIONS = (CR_HA_ANNOTATION,)


def _cr_ha(
    fields: Fields, metadata: Mapping[str, Any], sources: tuple[config.Source, ...]
) -> int | None:
    """``egress-router/ha-vrid: "N"`` on the CR: an active/standby pair with VRID N."""
    annotations = metadata.get("annotations") or {}
    for key in annotations:
        if str(key).startswith(CR_ANNOTATION_PREFIX) and key not in _CR_ANNOTATIONS:
            close = difflib.get_close_matches(str(key), _CR_ANNOTATIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise fields.error(
                f"metadata.annotations.{key}",
                f"unknown annotation; {hint}expected {', '.join(_CR_ANNOTATIONS)}",
            )
    if CR_HA_ANNOTATION not in annotations:
        return None
    field = f"metadata.annotations.{CR_HA_ANNOTATION}"
    value = annotations[CR_HA_ANNOTATION]
    if not isinstance(value, str):
        raise fields.error(field, f"must be a string, not {type_name(value)} (quote it)", value)
    vrid = ha.parse_vrid(value, fields.name(field))
    if not any(s.family == 4 for s in sources):
        raise fields.error(
            "spec.addresses",
            f"has no IPv4 address; {CR_HA_ANNOTATION} elects over IPv4 (VRRPv3): add the "
            "IPv4 reserved address or remove the annotation",
        )
    return vrid


def load_egressrouter_text(
    text: str, source: str, overrides: Overrides | None = None
) -> RouterSpec:
    """Parse an OpenShift ``EgressRouter`` (redirect mode) into our equivalent.

    Every field is honoured: the router is attached through our CNI plugin as
    the cluster network operator does it, but unlike upstream the macvlan mode
    and master and the fallback address are applied. The annotation
    ``egress-router/ha-vrid: "N"`` (the CRD has no field for it) makes it an
    active/standby pair with VRID N, as ``ha: true`` + ``vrid: N`` does.
    """
    overrides = overrides or Overrides()
    fields = Fields(source)
    doc = load_yaml(text, source)
    error = schema_error(
        EGRESSROUTER_SCHEMA, doc, fields.name,
        f"expected an {EGRESSROUTER_KIND} of {EGRESSROUTER_API_VERSION} in redirect mode",
    )
    if error is not None:
        raise error
    metadata, spec = doc["metadata"], doc["spec"]
    sources, gateways = _cr_addresses(fields, spec["addresses"])
    lines = _cr_lines(fields, spec["redirect"])
    destinations = lines.parse()
    check_families(
        lines, sources, gateways, destinations,
        source_field="spec.addresses", gateway_field="spec.addresses",
    )
    http_port = (
        config.DEFAULT_HTTP_PORT if overrides.http_port is None else overrides.http_port
    )
    extra = extra_ports(
        lines, destinations, [("--extra-port", v) for v in overrides.extra_ports], http_port
    )
    macvlan = (spec.get("networkInterface") or {}).get("macvlan") or {}
    master = macvlan.get("master")
    result = RouterSpec(
        name=check_name(fields, metadata["name"], "metadata.name"),
        namespace=check_namespace(fields, metadata.get("namespace"), "metadata.namespace"),
        sources=sources,
        gateways=gateways,
        destinations=destinations,
        destination_text=lines.text,
        attachment=Attachment.CNI,
        extra_ports=extra,
        master=None if master is None else fields.ifname(
            master, "spec.networkInterface.macvlan.master"
        ),
        # The CRD's default, which the API server fills in when the field is omitted.
        macvlan_mode=str(macvlan.get("mode", "Bridge")).lower(),
        image=check_image(fields, overrides.image, "--image") if overrides.image else DEFAULT_IMAGE,
        http_port=http_port,
        vrid=_cr_ha(fields, metadata, sources),
    )
    finish(fields, result, interface_field="spec.networkInterface", http_field="--http-port")
    return result
