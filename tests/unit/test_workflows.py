"""Dependencies and workflow graphs refused before anything is written: cycles, unknown jobs, bad policies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from bson import ObjectId
from conftest import raw_docs

from mongo_job_queue import InvalidJobError, WorkflowError, chain, chord, group
from mongo_job_queue.validation import dependency_problems, stored_job_problems
from mongo_job_queue.workflows import MAX_DEPENDENCIES, encode_dependencies, job, plan


def test_a_cycle_is_refused_naming_it_and_nothing_is_written(queue: Any) -> None:
    a, b = queue.job("t", {}), queue.job("t", {})
    with pytest.raises(WorkflowError, match="cycle"):
        queue.enqueue_graph(chain(a, b, a))
    c = queue.job("t", {}, depends_on=[a.id])
    with pytest.raises(WorkflowError, match=f"cycle: .*{a.id}"):
        queue.enqueue_graph(chain(c, a))
    assert raw_docs() == []


def test_an_unknown_dependency_is_refused_and_nothing_is_written(queue: Any) -> None:
    known = queue.enqueue("t", {})
    before = raw_docs()
    missing = ObjectId()
    with pytest.raises(WorkflowError, match=f"unknown job.*{missing}"):
        queue.enqueue("t", {}, depends_on=[known, missing])
    with pytest.raises(WorkflowError, match="unknown job"):
        queue.enqueue_graph(chain(queue.job("t", {}), queue.job("t", {}, depends_on=[missing])))
    with pytest.raises(WorkflowError, match="unknown job"):
        queue.enqueue_many([{"job_type": "t", "depends_on": [missing]}])
    assert raw_docs() == before  # not even the known dependency was flagged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depends_on": ["nope"]}, "depends_on entries"),
        ({"depends_on": "6b0e0000000000000000000a"}, "must be a list"),
        ({"depends_on": [ObjectId()], "on_dependency_failure": "retry"}, "on_dependency_failure must be one of"),
        ({"on_dependency_failure": "skip"}, "on_dependency_failure must be one of"),
        ({"depends_on": [(ObjectId(), "maybe")]}, "the policy of dependency"),
        ({"depends_on": [ObjectId()] * 2}, "twice"),
        ({"depends_on": [ObjectId() for _ in range(MAX_DEPENDENCIES + 1)]}, "at most"),
    ],
)
def test_bad_dependencies_are_refused_before_writing(queue: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(WorkflowError, match=match):
        queue.enqueue("t", {}, **kwargs)
    assert raw_docs() == []
    assert issubclass(WorkflowError, InvalidJobError)


def test_per_dependency_policies_as_pairs_or_a_mapping() -> None:
    a, b = ObjectId(), ObjectId()
    assert encode_dependencies([a, (b, "ignore")], "continue_with_results") == (
        [a, b],
        {str(a): "continue_with_results", str(b): "ignore"},
    )
    assert encode_dependencies({str(a): "cancel", b: "ignore"}) == ([a, b], {str(a): "cancel", str(b): "ignore"})


def test_graph_shapes_give_the_expected_edges_dependents_first() -> None:
    a, b, c, d = (job("t", {"n": n}) for n in "abcd")
    nodes, outside = plan(chain(a, group(b, c), d))
    order = [n.spec for n in nodes]
    assert order.index(d) < order.index(b) < order.index(a) and order.index(c) < order.index(a)
    deps = {n.spec.data["n"]: sorted(str(i) for i, _ in n.depends_on) for n in nodes}  # type: ignore[index]
    assert deps == {"a": [], "b": [str(a.id)], "c": [str(a.id)], "d": sorted([str(b.id), str(c.id)])}
    assert outside == set()
    e = job("t", {}, depends_on=[(ObjectId(), "ignore")])
    nodes, outside = plan(chord(group(e), job("t", {})))
    assert len(outside) == 1


def test_enqueue_with_depends_on_stores_a_blocked_job_and_flags_its_dependency(queue: Any) -> None:
    queue.register_handler("t", lambda job: {"ok": 1})
    upstream = queue.enqueue("t", {})
    blocked = queue.enqueue("t", {}, depends_on=[upstream], on_dependency_failure="ignore")
    docs = {d["_id"]: d for d in raw_docs()}
    assert docs[blocked.id]["status"] == "blocked" and docs[upstream.id]["has_dependents"] is True
    assert docs[blocked.id]["dependency_policies"] == {str(upstream.id): "ignore"}
    assert queue.run_once().id == upstream.id  # the blocked job is not claimable
    assert queue.run_once().id == blocked.id  # released by its dependency's final write
    done = queue.get_job(blocked.id)
    assert done.dependency_results() == {str(upstream.id): {"ok": 1}} and done.failed_dependencies() == {}


def test_cancelling_a_blocked_job_cancels_its_dependents(queue: Any) -> None:
    first = queue.enqueue("t", {}, delay_ms=60_000)
    second = queue.enqueue("t", {}, depends_on=[first])
    third = queue.enqueue("t", {}, depends_on=[second])
    assert queue.cancel_job(second.id)
    statuses = {d["_id"]: d["status"] for d in raw_docs()}
    assert statuses == {first.id: "pending", second.id: "cancelled", third.id: "cancelled"}
    assert queue.stats()["default"]["counts"]["blocked"] == 0


def test_stats_count_blocked_jobs(queue: Any) -> None:
    first = queue.enqueue("t", {}, delay_ms=60_000)
    queue.enqueue("t", {}, depends_on=[first])
    assert queue.stats()["default"]["counts"]["blocked"] == 1


def test_a_graph_without_transactions_is_inserted_in_order_and_runs(queue: Any) -> None:
    order: list[str] = []
    queue.register_handler("t", lambda job: order.append(job.data["n"]))
    a, b, c = (queue.job("t", {"n": n}) for n in "abc")
    jobs = queue.enqueue_graph(chain(a, group(b, c)))
    assert [j.id for j in jobs][-1] == a.id  # the job that can run at once is written last
    assert queue.drain() == 3
    assert order[0] == "a" and sorted(order[1:]) == ["b", "c"]


def test_eager_mode_runs_a_graph_in_dependency_order(queue: Any) -> None:
    order: list[str] = []
    queue.register_handler("t", lambda job: order.append(job.data["n"]) or job.data["n"])
    queue.eager = True
    a, b, c = (queue.job("t", {"n": n}) for n in "abc")
    jobs = queue.enqueue_graph(chain(a, b, c))
    assert order == ["a", "b", "c"] and [j.status for j in jobs] == ["completed"] * 3
    assert jobs[0].dependency_results() == {str(b.id): "b"}


def test_damaged_dependency_fields_are_stored_job_problems() -> None:
    job = {"status": "blocked", "type": "t", "queue": "q", "run_at": datetime(2026, 1, 1), "max_retries": 0}
    good = {**job, "depends_on": [ObjectId()], "dependency_policies": {}, "dependency_outcomes": {}}
    assert stored_job_problems(good) == [] and dependency_problems({**job, "depends_on": []}) == []
    for damage, field in (
        ({"depends_on": None}, "depends_on"),
        ({"depends_on": ["not an id"]}, "depends_on"),
        ({"dependency_policies": 1}, "dependency_policies"),
        ({"dependency_outcomes": 5}, "dependency_outcomes"),
        ({"dependency_outcomes": {"x": "completed"}}, "dependency_outcomes"),
    ):
        problems = stored_job_problems({**good, **damage})
        assert len(problems) == 1 and field in problems[0], (damage, problems)
    assert dependency_problems({**job, "status": "pending"}) == []  # only a blocked job must have depends_on
