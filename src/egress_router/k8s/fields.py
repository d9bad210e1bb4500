"""Checking the fields of an input document: each error names the field as the user wrote it.

`Fields` wraps the document's field names (``destinations[3]``, ``spec.redirect...``) around
the router's own parsers; `Lines` maps destination lines back to the field they came from;
the checks shared by both inputs (families, ports, names, image) live here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egress_router.core import config
from egress_router.k8s.spec import (
    Attachment,
    ExtraPort,
    RouterSpec,
    has_fallback,
    port_rules,
)
from egress_router.k8s.yaml_input import (
    type_name,
)

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The kernel's rule for interface names (IFNAMSIZ, no whitespace, '/' or ':').
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_IMAGE = re.compile(r"^\S+$")
_LINE_REF = re.compile(r"\bline (\d+)\b")


# --------------------------------------------------------------------------- field helpers


@dataclass(frozen=True)
class Fields:
    """Error helpers that name the input file and a field in it."""

    source: str

    def name(self, field: str) -> str:
        return f"{self.source}: {field}"

    def error(self, field: str, cause: str, value: object = None) -> config.ConfigError:
        if isinstance(value, bool):
            value = "true" if value else "false"  # as YAML wrote it
        return config.ConfigError(
            self.name(field), cause, text=None if value is None else str(value)
        )

    def string(self, doc: Mapping[str, Any], field: str, default: str | None = None) -> str | None:
        key = field.rsplit(".", 1)[-1]
        value = doc.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, not {type_name(value)} (quote it)", value)
        return value

    def required(self, doc: Mapping[str, Any], field: str, example: str) -> str:
        value = self.string(doc, field)
        if value is None:
            raise self.error(field, f"is not set; expected e.g. {example}")
        return value

    def integer(self, doc: Mapping[str, Any], field: str, *, low: int, high: int) -> int | None:
        value = doc.get(field.rsplit(".", 1)[-1])
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(field, f"expected a whole number from {low} to {high}", value)
        return value

    def mapping(self, doc: Mapping[str, Any], field: str) -> dict[Any, Any]:
        value = doc.get(field.rsplit(".", 1)[-1])
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(field, f"must be a mapping, not {type_name(value)}")
        return value

    def known(self, doc: Mapping[str, Any], allowed: Sequence[str], parent: str = "") -> None:
        for key in doc:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise self.error(
                    f"{parent}.{key}" if parent else str(key),
                    f"unknown field; {hint}expected one of {', '.join(allowed)}",
                )

    def choice(self, value: str, choices: Sequence[str], field: str) -> str:
        if value not in choices:
            raise self.error(field, f"unknown value; expected one of {', '.join(choices)}", value)
        return value

    def ifname(self, value: str, field: str) -> str:
        if not _IFNAME.match(value):
            raise self.error(
                field,
                "invalid interface name; expected 1 to 15 characters without spaces, '/' or ':'",
                value,
            )
        return value


@dataclass(frozen=True)
class Lines:
    """Destination lines and the input field each came from, for error messages.

    ``paths`` is None for a text block (errors then say ``destinations line
    3``); otherwise it holds one field path per line (``destinations[2]``,
    ``spec.redirect.redirectRules[2]``). ``renames`` turns the environment
    variables the parser mentions into the input's own names.
    """

    fields: Fields
    base: str
    text: str
    paths: tuple[str, ...] | None
    renames: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def where(self, line: int) -> str:
        if self.paths is None:
            return f"{self.base} line {line}"
        return self.paths[line - 1]

    def relabel(self, err: config.ConfigError) -> config.ConfigError:
        cause = err.cause
        for variable, name in self.renames.items():
            cause = cause.replace(variable, name)
        if self.paths is None:
            return config.ConfigError(
                self.fields.name(self.base), cause, line=err.line, text=err.text
            )
        cause = _LINE_REF.sub(lambda m: self.where(int(m.group(1))), cause)
        if err.line is None:
            return config.ConfigError(self.fields.name(self.base), cause, text=err.text)
        raw = self.text.splitlines()[err.line - 1]
        return config.ConfigError(
            self.fields.name(self.where(err.line)), cause, text=raw.split("#", 1)[0].strip()
        )

    def parse(self) -> config.Destinations:
        try:
            return config.parse_destinations(self.text, self.base)
        except config.ConfigError as err:
            raise self.relabel(err) from None


# --------------------------------------------------------------------------- shared checks


def parse_extra_ports(
    fields: Fields, items: Sequence[tuple[str, object]]
) -> tuple[ExtraPort, ...]:
    ports: list[ExtraPort] = []
    for field, value in items:
        if not isinstance(value, str) or value.count("/") != 1:
            raise fields.error(field, "expected <port>/<protocol>, e.g. 9000/tcp", value)
        port_text, proto_text = (part.strip() for part in value.split("/"))
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise fields.error(field, "invalid port; expected a number from 1 to 65535", value)
        try:
            proto = config.Proto(proto_text.lower())
        except ValueError:
            raise fields.error(
                field, f"unknown protocol {proto_text!r}; expected tcp, udp or sctp", value
            ) from None
        port = ExtraPort(int(port_text), proto)
        if port in ports:
            raise fields.error(field, "is listed twice", value)
        ports.append(port)
    return tuple(ports)


def check_families(
    lines: Lines,
    sources: tuple[config.Source, ...],
    gateways: tuple[config.IPAddress, ...],
    destinations: config.Destinations,
    *,
    source_field: str,
    gateway_field: str,
) -> None:
    try:
        config.check_families(
            sources, gateways, destinations,
            destination_variable=lines.base,
            source_variable=source_field,
            gateway_variable=gateway_field,
        )
    except config.ConfigError as err:
        if err.variable == lines.base:
            raise lines.relabel(err) from None
        raise config.ConfigError(
            lines.fields.name(err.variable), err.cause, line=err.line, text=err.text
        ) from None


def check_ports(
    lines: Lines,
    destinations: config.Destinations,
    extra: Sequence[tuple[str, ExtraPort]],
    *,
    http_port: int,
) -> None:
    """The HTTP port is no rule's, and every extra port is the fallback's and only its."""
    try:
        config.check_http_port(destinations, http_port, lines.base, lines.text)
    except config.ConfigError as err:
        raise lines.relabel(err) from None
    http_name = lines.renames.get(config.ENV_HTTP_PORT, config.ENV_HTTP_PORT)
    for field, port in extra:
        for rule in port_rules(destinations):
            if (rule.port, rule.proto) == (port.port, port.proto):
                raise lines.fields.error(
                    field,
                    f"{lines.where(rule.line)} already redirects this port, which makes it a "
                    "Service port; remove it here",
                    port,
                )
        if not has_fallback(destinations):
            raise lines.fields.error(
                field,
                "no fallback in the destinations, so this port would be refused; add a rule "
                "for it, or a last line with the fallback address",
                port,
            )
        if port.proto is config.Proto.TCP and port.port == http_port:
            raise lines.fields.error(
                field,
                f"is the router's own HTTP port ({http_name}), which the fallback does not "
                "serve; remove it here or move the HTTP port",
                port,
            )


def extra_ports(
    lines: Lines,
    destinations: config.Destinations,
    items: Sequence[tuple[str, object]],
    http_port: int,
) -> tuple[ExtraPort, ...]:
    ports = parse_extra_ports(lines.fields, items)
    named = list(zip([field for field, _ in items], ports, strict=True))
    check_ports(lines, destinations, named, http_port=http_port)
    return ports


def check_name(fields: Fields, value: str, field: str) -> str:
    if len(value) > 63 or not _DNS1035.match(value):
        raise fields.error(
            field,
            "invalid name; expected at most 63 characters a-z, 0-9 and '-', starting with a "
            "letter and ending with a letter or digit (it names the Service)",
            value,
        )
    return value


def check_namespace(fields: Fields, value: str | None, field: str) -> str | None:
    if value is not None and (len(value) > 63 or not _DNS1123.match(value)):
        raise fields.error(
            field,
            "invalid namespace; expected at most 63 characters a-z, 0-9 and '-', starting "
            "and ending with a letter or digit",
            value,
        )
    return value


def check_image(fields: Fields, value: str, field: str) -> str:
    if not _IMAGE.match(value):
        raise fields.error(
            field,
            "invalid image reference; expected e.g. registry.example.com/egress-router:0.1.0",
            value,
        )
    return value


_ENV_FIELDS = {
    config.ENV_POD_INTERFACE: "podInterface",
    config.ENV_BACKEND: "backend",
    config.ENV_DEBUG: "debug",
}


def finish(fields: Fields, spec: RouterSpec, *, interface_field: str, http_field: str) -> None:
    """Refuse interface clashes, then load the rendered environment as the init container will."""
    if spec.pod_interface == spec.egress_interface:
        if spec.attachment is Attachment.ANNOTATION:
            raise fields.error(
                "podInterface",
                f"is {spec.egress_interface}, the physical-network interface the platform "
                "adds; expected the pod-network interface (usually eth0)",
                spec.pod_interface,
            )
        raise fields.error(
            interface_field,
            f"is the same interface as podInterface ({spec.pod_interface!r}); the router "
            "needs a pod-side and a physical-side interface",
            spec.egress_interface,
        )
    env = dict(spec.environment())
    env[config.ENV_MODE] = (spec.proxy or config.Mode.INIT).value

    def read(path: str) -> str:
        del path
        return spec.destination_text

    try:
        config.load_config(env, read_text=read)
    except config.ConfigError as err:
        names = {**_ENV_FIELDS, config.ENV_INTERFACE: interface_field,
                 config.ENV_HTTP_PORT: http_field}
        raise config.ConfigError(
            fields.name(names.get(err.variable, err.variable)),
            err.cause, line=err.line, text=err.text,
        ) from None
