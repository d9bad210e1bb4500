"""``egress-router render``: the Kubernetes objects of one egress router, a command the cli adds.

A command beside ``wait`` and ``status``: it reads a config file (through the kernel edge's
bounded reader), calls the k8s wing's `manifest` and `render` (imported when the command
runs: every start of the init container would otherwise pay for the schema libraries) and
writes YAML. Bad input exits 1 with one line naming the field, as everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from egress_router.core import config
from egress_router.kernel import files

EXIT_CONFIG = 1


def _fail(message: str) -> NoReturn:
    click.echo(f"egress-router: error: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _read_stdin(source: str) -> str:
    """Standard input, at most `config.DESTINATION_FILE_LIMIT` bytes of UTF-8."""
    data = sys.stdin.buffer.read(config.DESTINATION_FILE_LIMIT + 1)
    if len(data) > config.DESTINATION_FILE_LIMIT:
        _fail(f"cannot read {source}: it is larger than {config.DESTINATION_FILE_LIMIT} bytes;"
              " give a smaller configuration")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        _fail(f"cannot read {source}: line {line} is not UTF-8 (byte 0x{data[err.start]:02x});"
              " save it as UTF-8")


_INPUT = click.Path(dir_okay=False, exists=True, allow_dash=True, path_type=Path)


@click.command("render")
@click.argument("config_file", required=False, type=_INPUT)
@click.option(
    "--from-egressrouter",
    "egressrouter",
    type=_INPUT,
    help="Read an OpenShift EgressRouter (network.operator.openshift.io/v1) instead.",
)
@click.option(
    "--operator",
    is_flag=True,
    help="Render the operator instead: the EgressRouter CRD (upstream's schema), its "
    "Namespace, ServiceAccount, RBAC and Deployment (two replicas, one active).",
)
@click.option(
    "--namespace",
    default=None,
    help="With --operator: the operator's namespace (default egress-router-operator).",
)
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per object into this directory instead of YAML to stdout.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Validate every object offline against the Kubernetes OpenAPI schemas (the "
    "NetworkAttachmentDefinition against its CRD) and the Service ports against the rules.",
)
@click.option(
    "--kubernetes-version",
    metavar="X.Y",
    default=None,
    help="The Kubernetes version whose schemas --check uses (default: the newest shipped).",
)
@click.option("--image", default=None, help="The egress-router image (overrides the config's).")
@click.option(
    "--extra-port",
    "extra_ports",
    multiple=True,
    metavar="PORT/PROTO",
    help="A Service port served by the fallback, e.g. 9000/tcp (repeatable).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of the health/readiness/metrics server (default 9090; 0: off).",
)
def render_command(
    *,
    config_file: Path | None,
    egressrouter: Path | None,
    operator: bool,
    namespace: str | None,
    output_dir: Path | None,
    check: bool,
    kubernetes_version: str | None,
    image: str | None,
    extra_ports: tuple[str, ...],
    http_port: int | None,
) -> None:
    """Render the Kubernetes objects of one egress router from one config file.

    A ConfigMap with the rules, a Service with one port per rule, a Deployment
    (one replica, Recreate) and, for the cni attachment, a
    NetworkAttachmentDefinition for the egress-router CNI plugin.
    """
    # Imported here: every start of the init container would pay ~0.1 s for the schema libraries.
    from egress_router.k8s import manifest  # noqa: PLC0415
    from egress_router.k8s import render as render_module  # noqa: PLC0415

    if operator:
        if config_file is not None or egressrouter is not None or extra_ports or check:
            raise click.UsageError("--operator takes no config file, --from-egressrouter, "
                                   "--extra-port or --check")
        _write(_operator_objects(namespace, image), output_dir, render_module)
        return
    if namespace is not None:
        raise click.UsageError("--namespace goes with --operator")
    if (config_file is None) == (egressrouter is None):
        raise click.UsageError("give either a config file or --from-egressrouter FILE")
    path = config_file or egressrouter
    assert path is not None
    source = "<stdin>" if str(path) == "-" else str(path)
    variable, what = ("FILE", "config file") if config_file else ("--from-egressrouter", "file")
    if str(path) == "-":
        text = _read_stdin(source)
    else:
        # The router's own bounded reader: a FIFO, a device or a huge file is refused with
        # a clear error instead of hanging or filling memory.
        try:
            text = files.read_bounded_file(str(path), variable, what)
        except config.ConfigError as err:
            _fail(err.cause)
    overrides = manifest.Overrides(image=image, extra_ports=extra_ports, http_port=http_port)
    try:
        if egressrouter is not None:
            spec = manifest.load_egressrouter_text(text, source, overrides)
        else:
            spec = manifest.load_config_text(text, source, overrides)
    except config.ConfigError as err:
        _fail(str(err))
    result = render_module.render(spec)
    for warning in result.warnings:
        click.echo(f"egress-router: warning: {warning}", err=True)
    if check:
        try:
            checked = render_module.check(
                result.objects, kubernetes_version or render_module.KUBERNETES_VERSION
            )
        except render_module.CheckError as err:
            _fail(str(err))
        for line in checked:
            click.echo(f"egress-router: checked {line}", err=True)
    _write(list(result.objects), output_dir, render_module)


def _operator_objects(namespace: str | None, image: str | None) -> list[dict[str, Any]]:
    from egress_router.k8s import manifest, operator_manifest  # noqa: PLC0415

    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        _fail(f"cannot parse --image {image!r}: expected an image reference without spaces")
    chosen = image or manifest.DEFAULT_IMAGE
    ns = namespace or operator_manifest.DEFAULT_NAMESPACE
    if not operator_manifest.valid_namespace(ns):
        _fail(f"cannot parse --namespace {ns!r}: expected a DNS label (a-z, 0-9, '-')")
    return operator_manifest.objects(ns, chosen, router_image=image)


def _write(objects: list[dict[str, Any]], output_dir: Path | None, render_module: Any) -> None:
    if output_dir is None:
        click.echo(render_module.to_yaml(objects), nl=False)
        return
    names = render_module.file_names(objects)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, obj in zip(names, objects, strict=True):
            (output_dir / name).write_text(render_module.to_yaml([obj]), encoding="utf-8")
    except OSError as err:
        _fail(f"cannot write {output_dir}: {err.strerror or err}; check the path")
    click.echo(f"egress-router: wrote {', '.join(names)} to {output_dir}", err=True)
