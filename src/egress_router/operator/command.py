"""``egress-router operator``: reconcile every EgressRouter of the cluster, a command the cli adds.

Only click at import time: the router's containers go through the same cli, and the Kubernetes
client (and its dependencies) is imported when the operator starts. The process campaigns for
the Lease (unless ``--no-leader-elect``), reconciles while it holds it, and on SIGTERM stops
writing, hands the Lease back (the standby takes over within one retry period instead of a
Lease duration) and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

import click

LEASE_NAME = "egress-router-operator"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = logging.getLogger("egress_router.operator")


def _namespace(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        return "default"


@click.command("operator")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A kubeconfig file (default: the pod's service account, else ~/.kube/config).")
@click.option("--router-image", envvar="EGRESS_ROUTER_IMAGE", default=None,
              help="The image of the routers it deploys (default: this version's).")
@click.option("--resync", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds between full passes over every EgressRouter.")
@click.option("--leader-elect/--no-leader-elect", default=True, show_default=True,
              help="Campaign for a Lease; only its holder writes.")
@click.option("--lease-namespace", default=None,
              help="Namespace of the Lease (default: POD_NAMESPACE, else the pod's own).")
@click.option("--lease-name", default=LEASE_NAME, show_default=True)
@click.option("--identity", default=None,
              help="This replica's name in the Lease (default: POD_NAME, else host and pid).")
@click.option("--debug", is_flag=True, help="Log every request's decision.")
def operator_command(
    *,
    kubeconfig: str | None,
    router_image: str | None,
    resync: float,
    leader_elect: bool,
    lease_namespace: str | None,
    lease_name: str,
    identity: str | None,
    debug: bool,
) -> None:
    """Reconcile EgressRouter resources (network.operator.openshift.io/v1) into routers.

    Each resource gets the objects `egress-router render --from-egressrouter` gives for it,
    owned by it, and its status conditions Available, Progressing and Degraded.
    """
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if debug else logging.INFO,
        format="egress-router-operator: %(levelname)s: %(message)s", force=True,
    )
    for noisy in ("urllib3", "kubernetes", "leaderelection"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The client and its dependencies only here (see the module docstring).
    from kubernetes import client  # noqa: PLC0415
    from kubernetes import config as kube_config  # noqa: PLC0415

    from egress_router.operator import api, controller, election  # noqa: PLC0415

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config()
        else:
            kube_config.load_kube_config(config_file=kubeconfig)
    except (kube_config.ConfigException, OSError) as err:
        click.echo(f"egress-router: error: cannot load the Kubernetes configuration: {err}; "
                   "give --kubeconfig or run in a pod with a service account", err=True)
        sys.exit(1)
    me = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settings = controller.Settings(image=router_image, resync=resync)
    namespace = _namespace(lease_namespace)
    if not leader_elect:
        kube = api.Api(client.ApiClient(), identity=me)
        thread = threading.Thread(
            target=controller.Controller(kube, settings).run, args=(stop,), daemon=True
        )
    else:

        def lead(term: threading.Event) -> None:
            def relay() -> None:
                stop.wait()
                term.set()

            threading.Thread(target=relay, daemon=True).start()
            controller.Controller(kube, settings).run(term)

        campaign = election.Election(namespace, lease_name, me, lead)
        kube = api.Api(client.ApiClient(), may_write=campaign.leading.is_set, identity=me)
        thread = threading.Thread(target=campaign.run, args=(stop,), daemon=True)
    log.info("%s starting (image %s, resync %.0fs, %s)", me, router_image or "default", resync,
             f"Lease {namespace}/{lease_name}" if leader_elect else "no leader election")
    thread.start()
    while not stop.wait(1.0):
        if not thread.is_alive():
            log.error("the controller thread ended; exiting")
            sys.exit(1)
    if leader_elect:
        campaign.leading.clear()  # no write from here on
        election.release(namespace, lease_name, me)
    log.info("stopped; %d writes", sum(kube.writes.values()))
    sys.exit(0)
