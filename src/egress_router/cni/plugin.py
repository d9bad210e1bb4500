"""The CNI commands: VERSION, ADD, DEL, CHECK, STATUS and GC (specification 1.1.0).

Each command validates everything it can before it changes anything, so a
bad configuration leaves the node and the pod untouched. ADD registers an
undo step for every change it makes (`contextlib.ExitStack`), so a failure
halfway (the kernel refusing the ruleset, an address, a route) leaves no
macvlan on the master and nothing half-configured in the pod. DEL is
idempotent: a missing namespace or interface is success. Every failure
becomes a CNI error object on stdout with a non-zero exit status; a bug
becomes code 100 with its traceback in the debug log, never on stdout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TextIO

from egress_router.cni import annotation, errors, macvlan, netconf, result
from egress_router.cni.errors import CniError
from egress_router.cni.netconf import Environment, NetConf
from egress_router.core import drift, plan

log = logging.getLogger("egress_router.cni")

EXIT_OK = 0
EXIT_ERROR = 1
LOG_FORMAT = "%(asctime)s egress-router-cni %(levelname)s [%(context)s] %(message)s"
# A runtime may start plugins with a minimal PATH; nft and ip live in sbin.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class _Context(logging.Filter):
    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = self.context
        return True


def _setup_logging(level: int, log_file: str | None, context: str, stderr: TextIO) -> None:
    root = logging.getLogger("egress_router")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(stderr)]
    problem = None
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as err:
            problem = f"cannot open log_file {log_file!r}: {err.strerror or err}; logging to stderr"
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_Context(context))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if problem:
        log.warning("%s", problem)


def _quietly(what: str, fn: Callable[..., object], *args: object) -> None:
    """An undo step: its own failure is logged, never hides the error being undone."""
    try:
        fn(*args)
    except Exception as err:
        log.warning("cannot %s: %s", what, getattr(err, "msg", None) or err)


class Plugin:
    """One invocation: the environment, the configuration and the kernel it acts on."""

    def __init__(self, env: Environment, kern: macvlan.Kernel, out: TextIO) -> None:
        self.env = env
        self.kernel = kern
        self.out = out

    def _print(self, obj: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(obj, indent=2) + "\n")
        self.out.flush()

    def _master(self, conf: NetConf) -> str:
        master = conf.macvlan.master or self.kernel.default_route_interface()
        if master is None:
            raise CniError(
                errors.MASTER_NOT_FOUND,
                "cannot choose the macvlan's master: the node has no default route; set "
                "interfaceArgs.master to the interface of the physical network",
            )
        return master

    def _master_link(
        self, conf: NetConf, master: str, what: str = "create the macvlan"
    ) -> macvlan.HostLink:
        link = self.kernel.host_link(master)
        if link is None:
            names = [n for n in self.kernel.host_link_names() if n != "lo"][:12]
            source = "interfaceArgs.master" if conf.macvlan.master else "the default route"
            raise CniError(
                errors.MASTER_NOT_FOUND,
                f"cannot {what}: master interface {master!r} (from {source}) does not exist on "
                f"this node; bring it up on the node, or set interfaceArgs.master to one of: "
                f"{', '.join(names) or '(none)'}",
            )
        return link

    # ------------------------------------------------------------------ ADD

    def add(self, conf: NetConf) -> None:
        env = self.env
        if not self.kernel.netns_exists(env.netns):
            raise CniError(
                errors.CONTAINER_UNKNOWN,
                f"cannot add {env.ifname} to container {env.container_id}: network namespace "
                f"{env.netns!r} does not exist",
            )
        master = self._master_link(conf, self._master(conf))
        mtu = conf.macvlan.mtu or master.mtu
        if mtu > master.mtu:
            raise CniError(
                errors.INVALID_CONFIG,
                f"cannot parse interfaceArgs.mtu: {mtu} is larger than master "
                f"{master.name!r}'s MTU {master.mtu}; a macvlan cannot exceed its master "
                "(leave mtu out to use the master's)",
            )
        problem = self.kernel.nft_problem()
        if problem:
            raise CniError(
                errors.ROUTER_SETUP_FAILED, f"cannot set up the egress router: {problem}"
            )
        probe = self.kernel.probe_pod(env.netns, env.ifname, conf.pod_interface)
        if probe.ifname_exists:
            raise CniError(
                errors.INTERFACE_EXISTS,
                f"cannot add {env.ifname} to container {env.container_id}: an interface "
                f"named {env.ifname!r} already exists in {env.netns}; choose another name "
                "(Multus: name@ifname in the networks annotation)",
            )
        if probe.unwritable:
            why = "; ".join(f"sysctl {k.replace('/', '.')} {w}" for k, w in probe.unwritable)
            raise CniError(
                errors.ROUTER_SETUP_FAILED,
                f"cannot set up the egress router in {env.netns}: {why}; the container "
                "runtime must leave /proc/sys writable; nothing was changed",
            )
        if not probe.pod_interface_exists:
            # podman does not keep the order of a container's networks: ours may come first.
            # The pod side (default route, return path) then waits for the pod network; the
            # wait container completes it at start (and CHECK reports it until then).
            log.warning(
                "podInterface %r is not in %s yet (the runtime ran this network's ADD before "
                "the pod network's): setting up the egress side only; the default route via "
                "%s and the pod return path are left to the wait container, which completes "
                "them when it starts",
                conf.pod_interface, env.netns, ", ".join(str(g) for g in conf.gateways),
            )
        cfg = conf.router_config(env.ifname)
        temp = macvlan.temp_name(env.container_id, env.ifname)
        if self.kernel.delete_host_macvlan(temp):
            log.warning("removed %s, left on the node by an earlier, interrupted ADD", temp)
        started = time.monotonic()
        with contextlib.ExitStack() as undo:
            undo.callback(_quietly, f"delete {temp} from the node",
                          self.kernel.delete_host_macvlan, temp)
            self.kernel.create_macvlan(temp, master, conf.macvlan.mode, mtu)
            undo.callback(_quietly, f"undo the setup in {env.netns}", self.kernel.undo_pod,
                          env.netns, (temp, env.ifname), probe)
            self.kernel.move_to_netns(temp, env.netns)
            link = self.kernel.setup_pod(
                env.netns, temp, cfg, pod_side=probe.pod_interface_exists
            )
            undo.pop_all()
        log.info(
            "added %s (%s, %s on %s) to %s in %.2fs: %s via %s%s",
            env.ifname, link.mac, conf.macvlan.mode, master.name, env.netns,
            time.monotonic() - started,
            ", ".join(s.interface.with_prefixlen for s in conf.sources),
            ", ".join(str(g) for g in conf.gateways),
            "" if conf.ha is None else f" (HA, VRID {conf.ha.vrid}: the address is left to "
            "the wait container's keepalived, on the active replica only)",
        )
        self._print(result.build(conf, link, conf.prev_result))

    # ------------------------------------------------------------------ DEL

    def delete(self, conf: NetConf | None) -> None:
        env = self.env
        temp = macvlan.temp_name(env.container_id, env.ifname)
        _quietly(f"delete {temp} from the node", self.kernel.delete_host_macvlan, temp)
        if not env.netns or not self.kernel.netns_exists(env.netns):
            log.info("nothing to delete: network namespace %r is gone", env.netns)
            return
        try:
            removed = self.kernel.teardown_pod(env.netns, env.ifname)
        except CniError as err:
            if err.code == errors.CONTAINER_UNKNOWN:
                log.info("nothing to delete: %s", err.msg)
                return
            raise
        log.info(
            "deleted from %s: %s", env.netns, ", ".join(removed) or "nothing (already gone)"
        )

    # ------------------------------------------------------------------ CHECK

    def check(self, conf: NetConf) -> None:
        env = self.env
        if conf.prev_result is None:
            raise CniError(
                errors.INVALID_CONFIG,
                "cannot check: prevResult is missing; the runtime must pass the result of "
                "the ADD being checked",
            )
        recorded = result.recorded(conf.prev_result, env.ifname, env.netns)
        if recorded is None:
            raise CniError(
                errors.CHECK_FAILED,
                f"cannot check {env.ifname}: prevResult lists no interface {env.ifname!r} in "
                f"{env.netns}; was it added by this network?",
            )
        if not self.kernel.netns_exists(env.netns):
            raise CniError(
                errors.CONTAINER_UNKNOWN,
                f"cannot check {env.ifname}: network namespace {env.netns!r} does not exist",
            )
        problem = self.kernel.ip_problem()
        if problem:
            raise CniError(errors.PLUGIN_NOT_AVAILABLE, f"cannot check {env.ifname}: {problem}")
        master_name = self._master(conf)
        master = self.kernel.host_link(master_name)
        cfg = conf.router_config(env.ifname)
        shape = drift.MacvlanShape(
            ifname=env.ifname,
            mode=conf.macvlan.mode,
            mtu=conf.macvlan.mtu,
            mac=recorded.mac,
            parent=master.index if master else None,
            master=master_name,
        )
        # The same comparison wait repairs from and status reports (core/drift).
        found = drift.reasons(drift.compare(
            plan.plan_interfaces(cfg),
            self.kernel.inspect_pod(env.netns),
            ruleset_listing=self.kernel.ruleset_listing(cfg),
            macvlan=shape,
        ))
        if found:
            # libcni prints msg and details together: details only carries what msg left out.
            shown, rest = found[:drift.MAX_REPORTED], found[drift.MAX_REPORTED:]
            raise CniError(
                errors.CHECK_FAILED,
                f"egress router {env.ifname} in {env.netns} differs from its configuration: "
                f"{drift.summarise(shown)}"
                + (f"; and {len(rest)} more (in details)" if rest else "")
                + "; run DEL and ADD again (restart the pod) to repair",
                details="\n".join(rest),
            )
        log.info("check passed: %s in %s matches the configuration", env.ifname, env.netns)

    # ------------------------------------------------------------------ STATUS, GC

    def status(self, conf: NetConf) -> None:
        problem = self.kernel.nft_problem()
        if problem:
            raise CniError(errors.PLUGIN_NOT_AVAILABLE, f"cannot serve ADD: {problem}")
        problem = self.kernel.ip_problem()
        if problem:
            raise CniError(errors.PLUGIN_NOT_AVAILABLE, f"cannot serve CHECK: {problem}")
        try:
            self._master_link(conf, self._master(conf), "serve ADD")
        except CniError as err:
            raise CniError(errors.PLUGIN_NOT_AVAILABLE, err.msg) from None

    def gc(self, attachments: tuple[netconf.Attachment, ...]) -> None:
        keep = {macvlan.temp_name(a.container_id, a.ifname) for a in attachments}
        stale = [
            name for name in self.kernel.host_macvlans()
            if macvlan.is_temp_name(name) and name not in keep
        ]
        failures = []
        for name in stale:
            try:
                self.kernel.delete_host_macvlan(name)
            except Exception as err:
                failures.append(f"{name}: {err}")
        log.info("garbage collection: %d stale macvlan(s) removed", len(stale) - len(failures))
        if failures:
            raise CniError(
                errors.TRY_AGAIN_LATER,
                f"cannot remove every stale macvlan: {'; '.join(failures)}",
            )


def _version_answer(stdin: bytes) -> dict[str, Any]:
    try:
        requested = json.loads(stdin or b"{}").get("cniVersion")
    except (ValueError, AttributeError):
        requested = None
    version = requested if requested in netconf.SUPPORTED_VERSIONS else netconf.LATEST_VERSION
    return {"cniVersion": version, "supportedVersions": list(netconf.SUPPORTED_VERSIONS)}


def run(
    environ: Mapping[str, str],
    stdin: bytes,
    out: TextIO,
    err: TextIO,
    kern: macvlan.Kernel | None = None,
) -> int:
    """One plugin invocation; returns the exit status. Never raises, never prints a traceback."""
    version = netconf.LATEST_VERSION
    command = environ.get("CNI_COMMAND", "?")
    _setup_logging(logging.INFO, None, command, err)
    try:
        env = netconf.parse_environment(environ)
        if env.command == netconf.VERSION:
            out.write(json.dumps(_version_answer(stdin)) + "\n")
            return EXIT_OK
        obj = netconf.decode(stdin)
        version = netconf.cni_version(obj)
        level, log_file = netconf.logging_settings(obj)
        context = " ".join(p for p in (env.command, env.container_id[:12], env.ifname) if p)
        _setup_logging(level, log_file, context, err)
        if not netconf.supports(version, env.command):
            raise CniError(
                errors.INCOMPATIBLE_VERSION,
                f"cannot run {env.command} with cniVersion {version}: it needs "
                f"{netconf.SINCE[env.command]} or later; raise cniVersion in the configuration",
            )
        plugin = Plugin(env, kern or macvlan.RealKernel(), out)
        log.debug("configuration: %s", json.dumps(obj))
        if annotation.KEY in obj:
            # Chained after the pod network: OpenShift SDN's assign-macvlan annotation.
            annotation.handle(env, obj, environ, plugin.kernel, plugin._print)
            return EXIT_OK
        if env.command == netconf.DEL:
            try:
                conf: NetConf | None = netconf.parse(obj, env.ifname)
            except CniError as bad:
                # ADD refused this configuration, and the runtime cleans up with DEL: succeed.
                log.warning("deleting despite an invalid configuration: %s", bad.msg)
                conf = None
            plugin.delete(conf)
        elif env.command == netconf.GC:
            plugin.gc(netconf.valid_attachments(obj))
        else:
            conf = netconf.parse(obj, env.ifname)
            handler = {
                netconf.ADD: plugin.add,
                netconf.CHECK: plugin.check,
                netconf.STATUS: plugin.status,
            }[env.command]
            handler(conf)
        return EXIT_OK
    except CniError as failure:
        log.error("%s (code %d)", failure.msg, failure.code)
        out.write(json.dumps(failure.to_json(version), indent=2) + "\n")
        return EXIT_ERROR
    except Exception as bug:
        log.debug("%s", traceback.format_exc())
        internal = CniError(
            errors.INTERNAL,
            f"cannot complete CNI {command}: unexpected {type(bug).__name__}: {bug}; run with "
            '"log_level": "debug" and report the log',
        )
        log.error("%s (code %d)", internal.msg, internal.code)
        out.write(json.dumps(internal.to_json(version), indent=2) + "\n")
        return EXIT_ERROR


def _with_sbin(path: str) -> str:
    parts = [p for p in path.split(":") if p]
    return ":".join(parts + [d for d in SBIN if d not in parts])


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Raised where the plugin is, so an ADD in progress unwinds through its undo steps.
    raise CniError(
        errors.TRY_AGAIN_LATER,
        f"interrupted by {signal.Signals(signum).name}; what this invocation changed was "
        "undone, try again",
    )


def _use_bundle(environ: dict[str, str] | os._Environ[str]) -> None:
    """In the one-file executable (scripts/build-cni.sh), run the ``nft`` it carries.

    PyInstaller unpacks the bundle to ``sys._MEIPASS``: ``bin/nft`` and the
    libraries it links are there, so the node needs no nftables. Its
    directory goes first on PATH (every ``shutil.which("nft")`` finds it) and
    on LD_LIBRARY_PATH (that nft loads the bundled libnftables, not the
    node's, which may be missing or older).
    """
    bundle = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or not bundle:
        return
    tools = os.path.join(bundle, "bin")
    path = [p for p in environ.get("PATH", "").split(":") if p and p != tools]
    environ["PATH"] = ":".join([tools, *path])
    libraries = environ.get("LD_LIBRARY_PATH", "")
    if bundle not in libraries.split(":"):
        environ["LD_LIBRARY_PATH"] = ":".join(p for p in (bundle, libraries) if p)


def main() -> None:
    """Console-script entry point ``egress-router-cni``."""
    signal.signal(signal.SIGTERM, _interrupted)
    os.environ["PATH"] = _with_sbin(os.environ.get("PATH", "/usr/bin:/bin"))
    _use_bundle(os.environ)
    # A person at a terminal (VERSION by hand) gets no hanging read.
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    code = run(os.environ, stdin, sys.stdout, sys.stderr)
    # Everything is said (the result or the error on stdout, the log flushed and closed):
    # leave without the interpreter's teardown of pyroute2 and the engine, which took a
    # quarter of a second of every invocation on a loaded node.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a runtime that hung up early
            stream.flush()
    os._exit(code)
