"""Dependencies between jobs, as the app writes them: specs, ``chain``/``group``/``chord``, and their checks.

Everything here is pure (no database): ``depends_on`` arguments are checked
and encoded once (:func:`encode_dependencies`), and a workflow graph is
checked whole, cycles and references included, before
:meth:`~mongo_job_queue.PersistentJobQueue.enqueue_graph` writes anything.
What the store does with the stored fields is in
:mod:`mongo_job_queue.store.dependencies`; see :doc:`workflows`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from bson import ObjectId

from .errors import WorkflowError
from .model import object_id

__all__ = [
    "DEPENDENCY_KEYS",
    "MAX_DEPENDENCIES",
    "MAX_DEPENDENCY_RESULT_BYTES",
    "POLICIES",
    "DependencyPolicy",
    "JobSpec",
    "Node",
    "Workflow",
    "chain",
    "chord",
    "encode_dependencies",
    "group",
    "job",
    "plan",
]

#: What a dependency that failed for good (or was cancelled) does to its dependent.
DependencyPolicy = Literal["cancel", "ignore", "continue_with_results"]
POLICIES: tuple[str, ...] = ("cancel", "ignore", "continue_with_results")
#: The enqueue arguments of dependencies.
DEPENDENCY_KEYS = ("depends_on", "on_dependency_failure")
#: Most dependencies of one job: their copied results must fit in its document.
MAX_DEPENDENCIES = 100
#: Largest result (BSON bytes) copied into a dependent; a larger one is left out (100 x 64 KiB < 16 MiB).
MAX_DEPENDENCY_RESULT_BYTES = 64 * 1024


@dataclass(frozen=True, eq=False)
class JobSpec:
    """One job of a workflow, not written yet: :meth:`~mongo_job_queue.PersistentJobQueue.enqueue`'s arguments.

    Its ``id`` is chosen now, so the graph can name it and the job keeps it once inserted.
    """

    job_type: str
    data: Mapping[str, Any] | None = None
    #: enqueue()'s other keyword arguments and the app's own fields (``depends_on`` included).
    options: Mapping[str, Any] = field(default_factory=dict)
    id: ObjectId = field(default_factory=ObjectId)


def job(job_type: str, data: Mapping[str, Any] | None = None, **options: Any) -> JobSpec:
    """A job spec for :func:`chain`, :func:`group`, :func:`chord` (``queue.job`` is the same)."""
    return JobSpec(job_type, data, dict(options))


#: A member of a graph: a spec or a smaller graph.
Part = Union[JobSpec, "Workflow"]


@dataclass(frozen=True)
class Workflow:
    """Job specs and the edges between them; ``heads`` run first, ``tails`` last (what a chain links)."""

    specs: tuple[JobSpec, ...]
    #: ``(dependent, dependency)`` pairs, by spec.
    edges: tuple[tuple[JobSpec, JobSpec], ...] = ()
    heads: tuple[JobSpec, ...] = ()
    tails: tuple[JobSpec, ...] = ()


def _as_workflow(part: Part) -> Workflow:
    if isinstance(part, Workflow):
        return part
    if isinstance(part, JobSpec):
        return Workflow((part,), (), (part,), (part,))
    raise WorkflowError(
        f"a workflow member must be a JobSpec (queue.job(...)) or a workflow, got {type(part).__name__}"
    )


def _merged(parts: Iterable[Workflow]) -> tuple[tuple[JobSpec, ...], tuple[tuple[JobSpec, JobSpec], ...]]:
    specs: dict[int, JobSpec] = {}
    edges: list[tuple[JobSpec, JobSpec]] = []
    for part in parts:
        for spec in part.specs:
            specs.setdefault(id(spec), spec)
        edges.extend(part.edges)
    return tuple(specs.values()), tuple(edges)


def group(*parts: Part) -> Workflow:
    """Run ``parts`` side by side; a chain or chord waits for all of them."""
    flows = [_as_workflow(p) for p in parts]
    specs, edges = _merged(flows)
    heads = tuple(h for f in flows for h in f.heads)
    tails = tuple(t for f in flows for t in f.tails)
    return Workflow(specs, edges, heads, tails)


def chain(*parts: Part) -> Workflow:
    """Run ``parts`` one after the other: each one's heads depend on all tails of the one before."""
    if not parts:
        raise WorkflowError("chain() needs at least one job")
    flows = [_as_workflow(p) for p in parts]
    specs, edges = _merged(flows)
    links = [(h, t) for before, after in itertools.pairwise(flows) for h in after.heads for t in before.tails]
    return Workflow(specs, edges + tuple(links), flows[0].heads, flows[-1].tails)


def chord(header: Part, callback: Part) -> Workflow:
    """Run ``callback`` once every job of ``header`` (a group, usually) has ended."""
    return chain(header, callback)


def check_policy(policy: Any, what: str = "on_dependency_failure") -> str:
    """``policy`` if it is one of :data:`POLICIES`, else WorkflowError."""
    if policy not in POLICIES:
        raise WorkflowError(f"{what} must be one of {', '.join(POLICIES)}, got {policy!r:.80}")
    return str(policy)


def _job_id(ref: Any) -> ObjectId:
    """The id of a dependency given as a job, a spec, an ObjectId or its hex string."""
    if isinstance(ref, JobSpec):
        return ref.id
    value = getattr(ref, "pk", ref)  # a job instance of the app's model
    found = object_id(value)
    if found is not None:
        return found
    raise WorkflowError(f"depends_on entries must be jobs, job ids or specs, got {value!r:.80}")


def encode_dependencies(depends_on: Any, default: Any = "cancel") -> tuple[list[ObjectId], dict[str, str]]:
    """``depends_on`` as stored: the ids, and the policy of each (by id string).

    Entries are jobs, ids or specs, each alone (``default`` policy) or as
    ``(entry, policy)``; a mapping ``{entry: policy}`` works too.
    """
    policy = check_policy(default)
    if isinstance(depends_on, Mapping):
        items: list[tuple[Any, Any]] = list(depends_on.items())
    elif isinstance(depends_on, (str, bytes)) or not isinstance(depends_on, Iterable):
        raise WorkflowError(f"depends_on must be a list of jobs or job ids, got {type(depends_on).__name__}")
    else:
        items = [entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, policy) for entry in depends_on]
    ids: list[ObjectId] = []
    policies: dict[str, str] = {}
    for ref, own in items:
        job_id = _job_id(ref)
        if str(job_id) in policies:
            raise WorkflowError(f"depends_on names job {job_id} twice")
        ids.append(job_id)
        policies[str(job_id)] = check_policy(own, f"the policy of dependency {job_id}")
    if len(ids) > MAX_DEPENDENCIES:
        raise WorkflowError(f"a job may depend on at most {MAX_DEPENDENCIES} jobs, got {len(ids)}")
    return ids, policies


@dataclass(frozen=True)
class Node:
    """One job of a checked graph: its spec, and every dependency with its policy."""

    spec: JobSpec
    depends_on: tuple[tuple[ObjectId, str], ...]


def plan(graph: Part) -> tuple[list[Node], set[ObjectId]]:
    """Check ``graph`` whole: its nodes, dependents before their dependencies, and the ids outside it.

    Raises WorkflowError for a cycle, two specs sharing an id, or a bad
    ``depends_on``; whether the outside ids exist is the store's to check.
    """
    flow = _as_workflow(graph)
    by_id: dict[ObjectId, JobSpec] = {}
    for spec in flow.specs:
        if spec.id in by_id:
            raise WorkflowError(f"two specs of the workflow share the id {spec.id}")
        by_id[spec.id] = spec
    deps: dict[ObjectId, dict[ObjectId, str]] = {}
    for spec in flow.specs:
        options = dict(spec.options)
        default = check_policy(options.get("on_dependency_failure", "cancel"))
        ids, policies = encode_dependencies(options.get("depends_on") or (), default)
        deps[spec.id] = {i: policies[str(i)] for i in ids}
    for dependent, dependency in flow.edges:
        own = deps[dependent.id]
        if dependency.id not in own:
            own[dependency.id] = check_policy(dependent.options.get("on_dependency_failure", "cancel"))
    for spec_id, own in deps.items():
        if len(own) > MAX_DEPENDENCIES:
            raise WorkflowError(
                f"job {spec_id} of the workflow depends on {len(own)} jobs (at most {MAX_DEPENDENCIES})"
            )
    order = _dependents_first(deps)
    outside = {d for own in deps.values() for d in own if d not in by_id}
    return [Node(by_id[i], tuple(deps[i].items())) for i in order], outside


def _dependents_first(deps: Mapping[ObjectId, Mapping[ObjectId, str]]) -> list[ObjectId]:
    """The graph's ids, each after every job that depends on it; WorkflowError naming a cycle if there is one."""
    inside = set(deps)
    state: dict[ObjectId, int] = {}  # 1: on the path, 2: done
    done: list[ObjectId] = []  # dependencies before dependents
    for start in deps:
        if state.get(start):
            continue
        stack: list[tuple[ObjectId, list[ObjectId]]] = [(start, [d for d in deps[start] if d in inside])]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if todo:
                nxt = todo.pop()
                if state.get(nxt) == 1:
                    path = [n for n, _ in stack]
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise WorkflowError(f"the workflow has a cycle: {' -> '.join(str(n) for n in cycle)}")
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, [d for d in deps[nxt] if d in inside]))
                continue
            stack.pop()
            state[node] = 2
            done.append(node)
    return done[::-1]
