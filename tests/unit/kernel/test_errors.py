"""The kernel edge's one error family: every failure is a KernelError with a kind."""

from __future__ import annotations

import os
import pickle

import pytest

from egress_router.kernel import conntrack, errors, iptables, netlink, netns, nft, observe
from egress_router.router import engine


def test_a_missing_tool_is_a_kernel_error_of_kind_tool_missing() -> None:
    with pytest.raises(nft.NftError) as caught:
        nft.NftCommand("/nonexistent/nft").run("", check_only=True)
    assert isinstance(caught.value, errors.KernelError)
    assert caught.value.kind is errors.Kind.TOOL_MISSING
    assert str(caught.value).startswith("cannot run '/nonexistent/nft': not installed")


def test_every_edge_error_is_in_the_family_and_a_read_error_is_no_os_error() -> None:
    for error in (nft.NftError, iptables.IptablesError, netlink.KernelRefusedError,
                  conntrack.ConntrackError, netns.NetnsError, observe.ReadError,
                  engine.ApplyError):
        assert issubclass(error, errors.KernelError), error
    assert not issubclass(observe.ReadError, OSError)
    assert nft.NftError("x").kind is errors.Kind.NFT_REFUSED
    assert observe.ReadError("x").kind is errors.Kind.READ_FAILED


def test_the_kind_survives_the_pipe_from_a_namespace_child() -> None:
    sent = nft.NftError("cannot run nft: no answer within 30s", errors.Kind.TIMED_OUT)
    received = pickle.loads(pickle.dumps(sent))
    assert (type(received), str(received), received.kind) == (
        nft.NftError, str(sent), errors.Kind.TIMED_OUT)


def test_a_namespace_child_that_never_answers_is_a_timeout_by_kind() -> None:
    # The CNI plugin maps this kind to its TIMED_OUT code; before, it searched the message
    # for "no answer within".
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(netns.NetnsError) as caught:
            netns._read_all(read_end, 0, 0.05, "/run/netns/example")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert caught.value.kind is errors.Kind.TIMED_OUT
    assert netns.NetnsError("cannot run: the child died").kind is errors.Kind.NAMESPACE_FAILED


def test_the_cni_code_of_a_namespace_failure_follows_its_kind_not_its_text() -> None:
    from egress_router.cni import errors as cni_errors  # noqa: PLC0415
    from egress_router.cni import pod  # noqa: PLC0415

    timed_out = netns.NetnsError("stopped", kind=errors.Kind.TIMED_OUT)
    assert pod._pod_error(timed_out, "probe").code == cni_errors.TIMED_OUT
    worded = netns.NetnsError("ValueError: no answer within the data")
    assert pod._pod_error(worded, "probe").code == cni_errors.INTERNAL
    gone = netns.NamespaceGoneError("no such namespace")
    assert pod._pod_error(gone, "probe").code == cni_errors.CONTAINER_UNKNOWN
