"""The operator's requests to the Kubernetes API: plain JSON objects, every write counted.

The official client (`kubernetes`) brings what is easy to get wrong — kubeconfig and in-cluster
configuration, TLS, bearer tokens that rotate — and its generic request path
(`ApiClient.param_serialize` + `call_api`); the objects stay dicts, as `render` makes them, so
one comparison (`diff`) serves every kind. Every write (create, update, status, delete, event)
passes `may_write` first (the leader election's fence: a replica that lost its Lease stops
writing at once) and is counted in `writes` and logged, so that "no write when nothing
changed" can be measured. Errors become `ApiError` with the HTTP status (0: no answer at all),
and `transient` says whether a retry may succeed.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client

from egress_router.operator import desired

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
FIELD_MANAGER = desired.MANAGED_BY


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        return base + (f"/{sub}" if sub else "")


RESOURCES = {
    r.kind: r
    for r in (
        Resource(desired.KIND, desired.GROUP, desired.VERSION, desired.PLURAL),
        Resource("ConfigMap", "", "v1", "configmaps"),
        Resource("Service", "", "v1", "services"),
        Resource("Event", "", "v1", "events"),
        Resource("Deployment", "apps", "v1", "deployments"),
        Resource("DaemonSet", "apps", "v1", "daemonsets"),
        Resource("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets"),
        Resource("NetworkAttachmentDefinition", "k8s.cni.cncf.io", "v1",
                 "network-attachment-definitions"),
    )
}
# The kinds `render` may give for an EgressRouter, in the order the operator watches them.
OWNED_KINDS = (
    "ConfigMap", "NetworkAttachmentDefinition", "DaemonSet", "Service", "Deployment",
    "PodDisruptionBudget",
)


class ApiError(Exception):
    """A request the API server refused or never answered (status 0)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

    @property
    def transient(self) -> bool:
        """Worth retrying as it is: no answer, conflict, expired, throttled, server error."""
        return self.status in (0, 409, 410, 429) or self.status >= 500


class NotLeaderError(Exception):
    """A write was attempted by a replica that does not hold the Lease."""


def _error(status: int, reason: str, data: bytes) -> ApiError:
    message = ""
    try:
        body = json.loads(data)
        message = str(body.get("message", ""))
        reason = str(body.get("reason") or reason)
    except (ValueError, AttributeError):
        message = data[:200].decode("utf-8", "replace")
    return ApiError(status, reason, message)


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


class Api:
    """JSON requests through one `kubernetes.client.ApiClient`."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        may_write: Callable[[], bool] = lambda: True,
        timeout: float = REQUEST_TIMEOUT,
        identity: str = "",
    ) -> None:
        self.client = api_client
        self.identity = identity  # this replica, as its Events name it (reportingInstance)
        self.may_write = may_write
        self.timeout = timeout
        self.writes: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ transport

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self.client.call_api(*params, _request_timeout=timeout or self.timeout)
        except client.ApiException as err:
            raise ApiError(int(err.status or 0), str(err.reason or "error")) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, "Unreachable", str(err)) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._send(method, path, **kwargs)
        try:
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, "Unreachable", str(err)) from None
        if not 200 <= resp.status < 300:
            raise _error(resp.status, str(resp.reason), data)
        return json.loads(data) if data else {}

    def _write(self, verb: str, what: str, method: str, path: str, **kwargs: Any) -> Any:
        if not self.may_write():
            raise NotLeaderError(f"cannot {verb} {what}: this replica does not hold the Lease")
        self.writes[verb] += 1
        log.info("write: %s %s", verb, what)
        return self._json(method, path, **kwargs)

    # ------------------------------------------------------------------ reads

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            obj: dict[str, Any] = self._json("GET", RESOURCES[kind].path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        obj.setdefault("apiVersion", RESOURCES[kind].api_version)
        obj.setdefault("kind", kind)
        return obj

    def list(
        self, kind: str, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of ``kind`` in every namespace, and the list's resourceVersion."""
        query = {"labelSelector": label_selector} if label_selector else {}
        body = self._json("GET", RESOURCES[kind].path(), query=query)
        items: list[dict[str, Any]] = body.get("items") or []
        for item in items:
            item.setdefault("apiVersion", RESOURCES[kind].api_version)
            item.setdefault("kind", kind)
        return items, str((body.get("metadata") or {}).get("resourceVersion") or "")

    def watch(
        self,
        kind: str,
        resource_version: str,
        label_selector: str | None = None,
        timeout: int = 300,
    ) -> Iterator[dict[str, Any]]:
        """Watch events from ``resource_version`` on; `ApiError` 410 when it has expired."""
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
            "resourceVersion": resource_version,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        resp = self._send("GET", RESOURCES[kind].path(), query=query,
                          timeout=(self.timeout, timeout + self.timeout))
        raw = resp.response
        try:
            if not 200 <= resp.status < 300:
                raise _error(resp.status, str(resp.reason), raw.read())
            buffer = b""
            try:
                for chunk in raw.stream(amt=None, decode_content=False):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if not line.strip():
                            continue
                        event: dict[str, Any] = json.loads(line)
                        if event.get("type") == "ERROR":
                            status = event.get("object") or {}
                            raise ApiError(int(status.get("code") or 500),
                                           str(status.get("reason") or "Error"),
                                           str(status.get("message") or ""))
                        yield event
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise ApiError(0, "Unreachable", str(err)) from None
        finally:
            raw.release_conn()

    # ------------------------------------------------------------------ writes

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = RESOURCES[obj["kind"]].path(meta.get("namespace"))
        result: dict[str, Any] = self._write(
            "create", describe(obj), "POST", path, body=dict(obj),
            query={"fieldManager": FIELD_MANAGER},
        )
        return result

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the resourceVersion it carries: 409 when someone changed it meanwhile."""
        meta = obj["metadata"]
        path = RESOURCES[obj["kind"]].path(meta.get("namespace"), meta["name"])
        result: dict[str, Any] = self._write(
            "update", describe(obj), "PUT", path, body=dict(obj),
            query={"fieldManager": FIELD_MANAGER},
        )
        return result

    def delete(self, obj: Mapping[str, Any]) -> None:
        """Delete exactly this object (its uid as precondition); gone already is fine."""
        meta = obj["metadata"]
        path = RESOURCES[obj["kind"]].path(meta.get("namespace"), meta["name"])
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": meta["uid"]}, "propagationPolicy": "Background"}
        try:
            self._write("delete", describe(obj), "DELETE", path, body=body)
        except ApiError as err:
            if err.status != 404:
                raise

    def patch_status(
        self, router: Mapping[str, Any], status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource, guarded by the resourceVersion read."""
        meta = router["metadata"]
        path = RESOURCES[desired.KIND].path(meta["namespace"], meta["name"], "status")
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": dict(status)}
        result: dict[str, Any] = self._write(
            "status", describe(router), "PATCH", path, body=body,
            content_type="application/merge-patch+json",
            query={"fieldManager": FIELD_MANAGER},
        )
        return result

    def event(
        self, router: Mapping[str, Any], kind: str, reason: str, message: str, *, now: str,
        component: str,
    ) -> None:
        """A core/v1 Event on the resource (``kubectl describe egressrouter`` shows it)."""
        meta = router["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": desired.API_VERSION, "kind": desired.KIND,
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": self.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._write("event", f"{reason} on {describe(router)}", "POST",
                    RESOURCES["Event"].path(meta["namespace"]), body=body)
