"""The chained assign-macvlan plugin's pure parts: CNI_ARGS, kubeconfigs, pass-through."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from egress_router.cni import annotation, plugin


def test_cni_args_are_split_on_semicolons() -> None:
    args = annotation.cni_args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=egress-multi"
    )
    assert args["K8S_POD_NAMESPACE"] == "default"
    assert args["K8S_POD_NAME"] == "egress-multi"
    assert annotation.cni_args("") == {}


def test_kubeconfig_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://172.31.0.2:6443', "
        "certificate-authority: ca.crt}}]\n"
        "users: [{name: u, user: {client-certificate: /abs/u.crt, client-key: u.key}}]\n"
    )
    access = annotation.load_kubeconfig(str(tmp_path / "kc"))
    assert access.server == "https://172.31.0.2:6443"
    assert access.ca_file == str(tmp_path / "ca.crt")
    assert access.cert_file == "/abs/u.crt"
    assert access.key_file == str(tmp_path / "u.key")


def test_a_kubeconfig_without_https_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text(
        "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'http://x'}}]\nusers: [{name: u, user: {}}]\n"
    )
    with pytest.raises(annotation.CniError, match="is not https"):
        annotation.load_kubeconfig(str(tmp_path / "kc"))


def _run(
    monkeypatch: pytest.MonkeyPatch, obj: dict[str, Any], pod: dict[str, Any]
) -> tuple[int, Any]:
    seen: list[tuple[str, str]] = []

    def get_pod(access: object, namespace: str, name: str) -> dict[str, Any]:
        seen.append((namespace, name))
        return pod

    monkeypatch.setattr(annotation, "load_kubeconfig", lambda path: object())
    monkeypatch.setattr(annotation, "get_pod", get_pod)
    environ = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/does-not-exist",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client",
    }
    out = io.StringIO()
    code = plugin.run(environ, json.dumps(obj).encode(), out, io.StringIO())
    assert seen == [("default", "client")]
    return code, json.loads(out.getvalue())


CONF = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "type": "egress-router",
    "assignMacvlan": {"kubeconfig": "/nonexistent"},
    "prevResult": {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.128.0.5/23", "gateway": "10.128.0.1", "interface": 0}],
    },
}


def test_a_pod_without_the_annotation_passes_the_previous_result_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, answer = _run(monkeypatch, CONF, {"metadata": {"annotations": {"other": "x"}}})
    assert code == 0
    assert answer["ips"] == CONF["prevResult"]["ips"]  # type: ignore[index]
    assert [i["name"] for i in answer["interfaces"]] == ["eth0"]


def test_an_annotated_pod_whose_namespace_is_gone_fails_with_a_cni_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, answer = _run(
        monkeypatch, CONF, {"metadata": {"annotations": {annotation.ANNOTATION: "true"}}}
    )
    assert code == 1
    assert "does not exist" in answer["msg"]


def test_a_json_kubeconfig_with_inline_certificates_is_read(tmp_path: Path) -> None:
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [
            {
                "name": "k",
                "cluster": {
                    "server": "https://172.31.0.2:6443",
                    "certificate-authority-data": "Q0E=",
                },
            }
        ],
        "users": [
            {
                "name": "u",
                "user": {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"},
            }
        ],
    }
    (tmp_path / "kc").write_text(json.dumps(doc))
    access = annotation.load_kubeconfig(str(tmp_path / "kc"))
    assert (access.ca_data, access.cert_data, access.key_data) == (b"CA", b"CERT", b"KEY")
