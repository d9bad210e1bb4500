"""Available, Progressing, Degraded from the facts; the time moves only with the status."""

from __future__ import annotations

from typing import Any

from egress_router.operator import conditions as c


def deployment(available: int, updated: int = 1, replicas: int = 1,
               observed: int = 2, generation: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "r", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"availableReplicas": available, "updatedReplicas": updated,
                       "observedGeneration": observed}}


def by_type(items: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {i["type"]: i for i in items}


def test_new_resource_progresses() -> None:
    got = by_type(c.conditions(c.Facts(), [], "T1"))
    assert got["Available"]["status"] == "False"
    assert got["Progressing"]["status"] == "True"
    assert got["Degraded"]["status"] == "False"
    assert {i["lastTransitionTime"] for i in got.values()} == {"T1"}


def test_rolled_out() -> None:
    got = by_type(c.conditions(c.Facts(deployment=deployment(1)), [], "T1"))
    assert got["Available"]["status"] == "True"
    assert got["Available"]["reason"] == c.DEPLOYMENT_AVAILABLE
    assert got["Progressing"]["status"] == "False"
    assert got["Progressing"]["message"] == "Deployment r: 1 of 1 replicas available, 1 updated"


def test_rollout_in_progress_when_generation_not_observed() -> None:
    got = by_type(c.conditions(c.Facts(deployment=deployment(1, observed=1)), [], "T"))
    assert got["Progressing"]["status"] == "True"


def test_invalid_is_degraded_with_the_message_and_old_router_still_available() -> None:
    message = "cannot parse EgressRouter n/r: spec.redirect.redirectRules[0].port: bad"
    got = by_type(c.conditions(c.Facts(invalid=message, deployment=deployment(1)), [], "T"))
    assert got["Degraded"] == {"type": "Degraded", "status": "True", "reason": c.INVALID,
                               "message": message, "lastTransitionTime": "T"}
    assert got["Available"]["status"] == "True"
    assert got["Progressing"]["status"] == "False"
    assert "previous configuration keeps running" in got["Progressing"]["message"]


def test_transition_time_kept_while_status_stays() -> None:
    first = c.conditions(c.Facts(deployment=deployment(0)), [], "T1")
    second = c.conditions(c.Facts(deployment=deployment(0, updated=0)), first, "T2")
    assert {i["lastTransitionTime"] for i in second} == {"T1"}
    assert not c.same(first, second)  # the message changed: one write
    third = c.conditions(c.Facts(deployment=deployment(1)), second, "T3")
    times = {i["type"]: i["lastTransitionTime"] for i in third}
    assert times == {"Available": "T3", "Progressing": "T3", "Degraded": "T1"}


def test_same_ignores_order() -> None:
    first = c.conditions(c.Facts(deployment=deployment(1)), [], "T1")
    assert c.same(first, list(reversed(first)))
    assert c.same(first, c.conditions(c.Facts(deployment=deployment(1)), first, "T9"))


def test_apply_failure_is_degraded() -> None:
    got = by_type(c.conditions(c.Facts(failure="422 Invalid: x"), [], "T"))
    assert got["Degraded"]["status"] == "True"
    assert got["Degraded"]["reason"] == c.APPLY_FAILED
