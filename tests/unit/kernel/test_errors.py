"""The kernel edge's one error family: every failure is a KernelError with a kind."""

from __future__ import annotations

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
