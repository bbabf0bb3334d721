"""``Context``: what a workflow uses to build step requests. No I/O here."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, Union, overload

from pydantic import TypeAdapter

from ._codec import adapter_for, decode, encode, return_adapter
from ._flow import FlowControl, KeySpec, Limit, Rate, flow_control
from ._steps import (
    CallResponse,
    CallStep,
    ContinueAsNewStep,
    EventStep,
    GatherStep,
    InvokeStep,
    LeafStep,
    RaceStep,
    ReplyStep,
    RetryPolicy,
    RunStep,
    SleepStep,
    Step,
    Winner,
    as_timedelta,
    is_leaf,
)
from ._updates import Received, Update, answer_type_of, update_key
from .exceptions import WorkflowDefinitionError

if TYPE_CHECKING:
    from ._workflow import Workflow

__all__ = ["Context", "RunInfo", "StepTracker"]

P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M")
R = TypeVar("R")
S = TypeVar("S", bound="Step[Any]")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")
T6 = TypeVar("T6")
Q = TypeVar("Q")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Facts about the run a workflow executes in.

    Attributes:
        run_id: the run's id.
        workflow_name: the name the workflow is registered under.
        started_at: when the run was started (aware, UTC).
        parent_run_id: the parent's run id, for a child started by ``invoke``.
        continued_from: the run this one continues, for a run started by
            ``ctx.continue_as_new``.
    """

    run_id: str
    workflow_name: str
    started_at: datetime
    parent_run_id: str | None = None
    continued_from: str | None = None


class StepTracker:
    """What the engine driving a context watches: which steps were built, and when.

    ``live`` is true while the workflow's body runs (steps are built there,
    never inside a step function); ``built`` holds the steps built and not
    yet yielded, so a forgotten ``yield from`` is reported, not skipped;
    ``status`` is the JSON of the latest ``ctx.set_status`` (None until one).
    """

    __slots__ = ("built", "live", "status")

    def __init__(self) -> None:
        self.live: bool = False
        self.built: list[Step[Any]] = []
        self.status: str | None = None


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError(f"a step name must be a non-empty string, got {name!r}")
    return name


def _check_aware(when: datetime, what: str) -> datetime:
    if not isinstance(when, datetime):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise WorkflowDefinitionError(f"{what} takes a datetime, got {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise WorkflowDefinitionError(
            f"{what} needs an aware datetime (with a timezone), got naive {when.isoformat()}; "
            "use datetime.now(UTC) or django.utils.timezone.now()"
        )
    return when


class Context:
    """The workflow's handle on the engine: builds step requests, tells the time.

    A workflow receives one as its first argument. Its methods only *build*
    requests; ``yield from`` a request to have the engine carry it out. The
    deterministic helpers (``now``, ``uuid4``, ``random``) give the same
    values when the run is replayed.
    """

    __slots__ = ("_clock", "_info", "_patches", "_random", "_replaying", "_tracker")

    def __init__(
        self,
        info: RunInfo,
        *,
        clock: Callable[[], datetime] | None = None,
        replaying: Callable[[], bool] | None = None,
        patches: Callable[[str, bool], bool] | None = None,
        tracker: StepTracker | None = None,
    ) -> None:
        """A context for one run.

        Args:
            info: the run's facts.
            clock: the workflow clock (default: the run's start, forever).
            replaying: tells whether recorded steps are being replayed.
            patches: decides ``patched``/``deprecate_patch`` against the
                journal (the engine's); without one every patch is taken,
                as for a new run.
            tracker: the engine's watch on the steps built (to report a
                forgotten ``yield from``); none for a context made by hand.
        """
        self._info = info
        self._clock = clock or (lambda: info.started_at)
        self._replaying = replaying or (lambda: False)
        self._patches = patches or _new_run_patches
        # Seeded when first asked for (seeding costs tens of microseconds a
        # replay, and most workflows never ask): the same sequence either way.
        self._random: random.Random | None = None
        self._tracker = tracker if tracker is not None else _HandMade()

    def _track(self, step: S) -> S:
        tracker = self._tracker
        if tracker.__class__ is not _HandMade:
            if not tracker.live:
                raise WorkflowDefinitionError(
                    f"{step.describe()} was built outside the workflow's body (inside a step "
                    "function, or after the run ended); steps are built and yielded by the "
                    "workflow generator itself"
                )
            tracker.built.append(step)
        return step

    # -- facts ---------------------------------------------------------------

    @property
    def info(self) -> RunInfo:
        """The run's id, workflow name, start time and parent."""
        return self._info

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._info.run_id

    @property
    def workflow_name(self) -> str:
        """The name the running workflow is registered under."""
        return self._info.workflow_name

    @property
    def is_replaying(self) -> bool:
        """True while recorded steps are being replayed (e.g. to skip duplicate logs)."""
        return self._replaying()

    def now(self) -> datetime:
        """The workflow's clock: when the latest step it saw settled (aware, UTC).

        Recorded in the journal, so a replay sees the same value. It moves
        only when a step settles, like Temporal's ``workflow.now()``.
        """
        return self._clock()

    def uuid4(self) -> uuid.UUID:
        """A random-looking UUID, the same sequence on every replay of this run."""
        return uuid.UUID(int=self.random().getrandbits(128), version=4)

    def random(self) -> random.Random:
        """A ``random.Random`` seeded from the run id: the same sequence on replay."""
        found = self._random
        if found is None:
            found = self._random = random.Random(self._info.run_id)
        return found

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new code path of the change ``patch_id``.

        ``True`` for a run that reaches this point under the new code (it is
        recorded in the journal as a ``patch`` marker, so every replay of the
        run answers the same); ``False`` for a run that already went past this
        point under the old code, which then replays down the old path::

            if ctx.patched("charge-v2"):
                charge = yield from ctx.run("charge-v2", charge_v2, order.order_id)
            else:
                charge = yield from ctx.run("charge", charge_card, order.order_id)

        Once no run from before the change is left, replace ``patched`` with
        ``deprecate_patch`` (keeps runs that recorded the marker replaying),
        and later remove that too.
        """
        return self._patches(_check_patch_id(patch_id), False)

    def deprecate_patch(self, patch_id: str) -> None:
        """Step over the marker ``patched(patch_id)`` recorded, if this run has one.

        Put it where ``if ctx.patched(patch_id):`` was once only the new path
        is left: runs that recorded the marker replay, new runs record none.
        """
        self._patches(_check_patch_id(patch_id), True)

    def set_status(self, status: object) -> None:
        """Publish the run's custom status: what a caller reads while the run goes on.

        ``status`` is a pydantic model (or any value pydantic can dump to
        JSON); it is validated and stored with the run when the runtime next
        checkpoints it, in the same transaction, and read with
        ``RunHandle.custom_status(Model)``. Not a step (no ``yield from``):
        a replay calls it again at the same places, so the stored status is
        always the one the latest ``set_status`` the run reached gave.

        Raises:
            PayloadValidationError: the value cannot be dumped to JSON.
            WorkflowDefinitionError: called outside the workflow's body.
        """
        tracker = self._tracker
        if tracker.__class__ is not _HandMade and not tracker.live:
            raise WorkflowDefinitionError(
                "ctx.set_status was called outside the workflow's body (inside a step "
                "function, or after the run ended); call it from the workflow generator"
            )
        tracker.status = encode(
            adapter_for(type(status)),
            status,
            what=f"the status set by workflow {self._info.workflow_name!r}",
        )

    def continue_as_new(self, workflow: Workflow[M, Any], payload: M) -> ContinueAsNewStep:
        """End this run and start a fresh run of this workflow with ``payload``.

        ``yield from ctx.continue_as_new(this_workflow, new_payload)`` (or
        ``return (yield from ...)``) ends the run as ``continued``; the new
        run starts at once with an empty journal, so a loop that goes on for
        ever never replays an ever longer history. ``workflow`` must be the
        workflow that is running (it types ``payload``). The new run's id is
        derived from the first run's id and a generation count; both runs
        link to each other (``continued_as``, ``continued_from``), and
        ``RunHandle.result()`` on any run of the chain waits for the last.
        Nothing after it runs: it is a ``Step[Never]``.

        Raises:
            WorkflowDefinitionError: ``workflow`` is not the running one.
            PayloadValidationError: ``payload`` does not fit its payload type.
        """
        from ._workflow import Workflow

        if not isinstance(workflow, Workflow):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise WorkflowDefinitionError(f"continue_as_new needs a @workflow, got {workflow!r}")
        if workflow.name != self._info.workflow_name:
            raise WorkflowDefinitionError(
                f"continue_as_new starts a new run of the running workflow "
                f"{self._info.workflow_name!r}; got {workflow!r}"
            )
        what = f"the payload to continue workflow {workflow.name!r} with"
        payload_json = encode(workflow.payload_adapter, payload, what=what)
        # Decoded once more, as the new run's ticks will (``model_construct``).
        decode(workflow.payload_adapter, payload_json, what=what)
        return self._track(ContinueAsNewStep("continue_as_new", workflow.name, payload_json))

    # -- steps ---------------------------------------------------------------

    @overload
    def run(
        self,
        name: str,
        fn: Callable[P, Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> RunStep[T]: ...
    @overload
    def run(
        self,
        name: str,
        fn: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> RunStep[T]: ...
    def run(
        self,
        name: str,
        fn: Callable[P, Any],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> RunStep[Any]:
        """Run ``fn(*args, **kwargs)`` as a durable step.

        The function runs once (at least once, unless ``atomic``); its result
        is validated against ``fn``'s return annotation, recorded as JSON and
        replayed from the journal afterwards. Set retry policy, timeout or
        atomicity with ``.options(...)`` on the returned step, or for every
        call of a function with the ``@step(...)`` decorator.
        """
        try:
            spec: _StepSpec = fn.__hookflow_spec__  # type: ignore[attr-defined]  # cached below
        except AttributeError:
            spec = _step_spec(fn, name)
        if not name or name.__class__ is not str:
            _check_name(name)
        return self._track(
            RunStep(
                name,
                fn,
                args,
                kwargs,
                retry=spec.retry,
                timeout=spec.timeout,
                atomic=spec.atomic,
                adapter=spec.adapter,
                flow=spec.flow,
            )
        )

    def sleep(self, name: str, duration: timedelta | float) -> SleepStep:
        """Sleep for ``duration`` (a timedelta or seconds), counted from when first reached."""
        delay = as_timedelta(duration)
        if delay < timedelta(0):
            raise WorkflowDefinitionError(f"sleep {name!r} got a negative duration {delay}")
        return self._track(SleepStep(_check_name(name), duration=delay))

    def sleep_until(self, name: str, when: datetime) -> SleepStep:
        """Sleep until the aware datetime ``when`` (a naive one is an error)."""
        return self._track(SleepStep(_check_name(name), until=_check_aware(when, "sleep_until")))

    @overload
    def call(
        self,
        name: str,
        url: str,
        *,
        method: str = ...,
        body: Any = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: timedelta | float | None = ...,
        retry: RetryPolicy | None = ...,
        raise_for_status: Literal[True] = ...,
    ) -> CallStep[str]: ...
    @overload
    def call(
        self,
        name: str,
        url: str,
        *,
        response_model: type[T],
        method: str = ...,
        body: Any = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: timedelta | float | None = ...,
        retry: RetryPolicy | None = ...,
        raise_for_status: Literal[True] = ...,
    ) -> CallStep[T]: ...
    @overload
    def call(
        self,
        name: str,
        url: str,
        *,
        method: str = ...,
        body: Any = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: timedelta | float | None = ...,
        retry: RetryPolicy | None = ...,
        raise_for_status: Literal[False],
    ) -> CallStep[str]: ...
    @overload
    def call(
        self,
        name: str,
        url: str,
        *,
        response_model: type[T],
        method: str = ...,
        body: Any = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: timedelta | float | None = ...,
        retry: RetryPolicy | None = ...,
        raise_for_status: Literal[False],
    ) -> CallStep[T | str]: ...
    def call(
        self,
        name: str,
        url: str,
        *,
        response_model: Any = str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: timedelta | float | None = None,
        retry: RetryPolicy | None = None,
        raise_for_status: bool = True,
    ) -> CallStep[Any]:
        """Make an HTTP request as a durable step.

        ``body`` is sent as JSON (a ``str`` or ``bytes`` body as is). A 2xx
        answer becomes a ``CallResponse`` whose body is parsed as JSON into
        ``response_model`` (kept as text without one). By default any other
        status fails the attempt; 429 and 5xx are retried per ``retry``,
        other 4xx are not. With ``raise_for_status=False`` every answer is a
        ``CallResponse`` to read (``.status``, ``.ok``, ``.headers``), the
        body of a non-2xx one being its raw text, so the result is typed
        ``CallResponse[Model | str]``; only a request that got no answer
        fails and is retried. With the QStash scheduler, QStash makes the
        request, so no worker waits on a slow API.
        """
        if not url.startswith(("http://", "https://")):
            raise WorkflowDefinitionError(f"call {name!r} needs an http(s) URL, got {url!r}")
        result_body: Any = response_model if raise_for_status else Union[response_model, str]  # noqa: UP007  # any annotation, not only classes
        return self._track(
            CallStep(
                _check_name(name),
                url,
                method=method.upper(),
                body=body,
                headers=dict(headers or {}),
                timeout=as_timedelta(timeout) if timeout is not None else None,
                retry=retry,
                response_model=response_model,
                adapter=adapter_for(CallResponse[result_body]),
                raise_for_status=bool(raise_for_status),
            )
        )

    @overload
    def wait_for_event(
        self, name: str, model: type[T], *, key: str, timeout: None = None
    ) -> EventStep[T]: ...
    @overload
    def wait_for_event(
        self, name: str, model: type[T], *, key: str, timeout: timedelta | float
    ) -> EventStep[T | None]: ...
    def wait_for_event(
        self, name: str, model: type[Any], *, key: str, timeout: timedelta | float | None = None
    ) -> EventStep[Any]:
        """Wait for ``notify(key, payload)``; the payload is validated as ``model``.

        Without a timeout the result is the event. With one, it is the event
        or None if the timeout passed first. An event sent before the run
        reaches this step is kept and delivered when it does.
        """
        if not key:
            raise WorkflowDefinitionError(f"wait_for_event {name!r} needs a non-empty string key")
        event_adapter = adapter_for(model)
        if timeout is None:
            return self._track(
                EventStep(_check_name(name), key, model, None, event_adapter, event_adapter)
            )
        limit = as_timedelta(timeout)
        return self._track(
            EventStep(
                _check_name(name), key, model, limit, adapter_for(model | None), event_adapter
            )
        )

    # -- updates -------------------------------------------------------------

    @overload
    def receive(
        self, update: Update[Q, A], *, timeout: None = None, name: str | None = None
    ) -> EventStep[Received[Q, A]]: ...
    @overload
    def receive(
        self, update: Update[Q, A], *, timeout: timedelta | float, name: str | None = None
    ) -> EventStep[Received[Q, A] | None]: ...
    def receive(
        self,
        update: Update[Any, Any],
        *,
        timeout: timedelta | float | None = None,
        name: str | None = None,
    ) -> EventStep[Any]:
        """Wait for the next ``update`` sent to this run: a typed ``Received``.

        An update sent before the run gets here is kept, in the order sent,
        and received at once. With a timeout the result is None when no
        update came in time. Answer it with ``ctx.reply`` (or refuse it with
        ``ctx.reject``), now or after other steps; an update the run never
        answers fails its caller when the run ends. ``name`` names the step
        (default: the update's name).
        """
        if not isinstance(update, Update):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise WorkflowDefinitionError(f"receive needs an Update, got {update!r}")
        step_name = _check_name(name) if name is not None else update.name
        key = update_key(self.run_id, update.name)
        received = update.received_type
        received_adapter = adapter_for(received)
        if timeout is None:
            return self._track(
                EventStep(
                    step_name, key, received, None, received_adapter, received_adapter, update
                )
            )
        return self._track(
            EventStep(
                step_name,
                key,
                received,
                as_timedelta(timeout),
                adapter_for(received | None),
                received_adapter,
                update,
            )
        )

    def reply(self, received: Received[Any, A], answer: A) -> ReplyStep:
        """Answer a received update with ``answer``: the caller's ``update`` returns it.

        ``answer`` is validated as the update's answer type. The reply is
        recorded in the journal, with the answer, in one transaction, so a
        replay never answers twice; an update is answered (or rejected) once.
        """
        adapter = adapter_for(answer_type_of(_check_received(received, "reply")))
        what = f"the answer to update {received.name!r}"
        return self._track(
            ReplyStep(received.name, received.id, answer=encode(adapter, answer, what=what))
        )

    def reject(self, received: Received[Any, Any], reason: str) -> ReplyStep:
        """Refuse a received update: the caller's ``update`` raises ``UpdateRejected(reason)``."""
        _check_received(received, "reject")
        if not isinstance(reason, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise WorkflowDefinitionError(f"reject takes a reason string, got {reason!r}")
        return self._track(ReplyStep(received.name, received.id, reason=reason))

    def invoke(
        self,
        name: str,
        workflow: Workflow[M, R],
        payload: M,
        *,
        run_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> InvokeStep[R]:
        """Start ``workflow`` as a child run with ``payload`` and wait for its result.

        A child that fails throws ``StepFailed`` here (``caused_by`` sees the
        child's own error). ``run_id`` defaults to one derived from this run
        and the step's position, so a replay never starts a second child.
        With ``retry``, a failed child is followed by a new child run
        (``<run id>-attempt-<n>``) after the policy's back-off, up to its
        ``maximum_attempts``; without, a child failure is final (the
        workflow's and the runtime's default step policies do not apply).
        """
        from ._workflow import Workflow

        if not isinstance(workflow, Workflow):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise WorkflowDefinitionError(f"invoke {name!r} needs a @workflow, got {workflow!r}")
        return self._track(
            InvokeStep(
                _check_name(name),
                workflow,
                payload,
                run_id,
                adapter=workflow.result_adapter,
                retry=retry,
            )
        )

    @overload
    def gather(self, /) -> GatherStep[tuple[()]]: ...
    @overload
    def gather(self, s1: Step[T1], /) -> GatherStep[tuple[T1]]: ...
    @overload
    def gather(self, s1: Step[T1], s2: Step[T2], /) -> GatherStep[tuple[T1, T2]]: ...
    @overload
    def gather(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], /
    ) -> GatherStep[tuple[T1, T2, T3]]: ...
    @overload
    def gather(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], s4: Step[T4], /
    ) -> GatherStep[tuple[T1, T2, T3, T4]]: ...
    @overload
    def gather(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], s4: Step[T4], s5: Step[T5], /
    ) -> GatherStep[tuple[T1, T2, T3, T4, T5]]: ...
    @overload
    def gather(
        self,
        s1: Step[T1],
        s2: Step[T2],
        s3: Step[T3],
        s4: Step[T4],
        s5: Step[T5],
        s6: Step[T6],
        /,
    ) -> GatherStep[tuple[T1, T2, T3, T4, T5, T6]]: ...
    @overload
    def gather(self, *steps: Step[T]) -> GatherStep[tuple[T, ...]]: ...
    def gather(self, *steps: Step[Any]) -> GatherStep[tuple[Any, ...]]:
        """Run steps in parallel; the result is the tuple of their results, in order.

        Every branch runs to its end. If any failed, the first failed branch
        (in argument order) is thrown into the workflow as ``StepFailed``.
        Branch names must differ. ``gather()`` with no steps is ``()`` at
        once (a fan-out over an empty list). Gathers and races do not nest:
        pass leaf steps (``ctx.run``, ``ctx.sleep``, ...).
        """
        branches = _branches("gather", steps)
        return self._track(GatherStep(f"gather({', '.join(b.name for b in branches)})", branches))

    @overload
    def race(
        self, s1: Step[T1], /, *, cancel_losers: bool = ...
    ) -> RaceStep[Winner[Literal[0], T1]]: ...
    @overload
    def race(
        self, s1: Step[T1], s2: Step[T2], /, *, cancel_losers: bool = ...
    ) -> RaceStep[Winner[Literal[0], T1] | Winner[Literal[1], T2]]: ...
    @overload
    def race(
        self, s1: Step[T1], s2: Step[T2], s3: Step[T3], /, *, cancel_losers: bool = ...
    ) -> RaceStep[Winner[Literal[0], T1] | Winner[Literal[1], T2] | Winner[Literal[2], T3]]: ...
    @overload
    def race(
        self,
        s1: Step[T1],
        s2: Step[T2],
        s3: Step[T3],
        s4: Step[T4],
        /,
        *,
        cancel_losers: bool = ...,
    ) -> RaceStep[
        Winner[Literal[0], T1]
        | Winner[Literal[1], T2]
        | Winner[Literal[2], T3]
        | Winner[Literal[3], T4]
    ]: ...
    @overload
    def race(self, *steps: Step[T], cancel_losers: bool = ...) -> RaceStep[Winner[int, T]]: ...
    def race(self, *steps: Step[Any], cancel_losers: bool = True) -> RaceStep[Winner[int, Any]]:
        """Run steps at once and resume on the first to settle: a typed ``Winner``.

        A timer raced against an event or a step is the common case::

            won = yield from ctx.race(
                ctx.wait_for_event("approval", Approval, key=key),
                ctx.sleep("deadline", timedelta(days=2)),
            )
            if won.index == 0:
                approval = won.value  # Approval

        The first branch to complete or fail wins (when several settled by
        the time the engine looks, the first in argument order); if it
        failed, its ``StepFailed`` is thrown in. The losers are settled as
        cancelled at once, so the run never waits on them: a pending timer
        or event wait just ends, a child run is cancelled, and a step
        function already running is not interrupted but its result is
        dropped. With ``cancel_losers=False`` the losers are left to finish
        instead: they keep running while the workflow goes on (their results
        are recorded, not used; a run that ends does not wait for them).
        The winner is recorded in the journal, so every replay resumes the
        same way. Races and gathers do not nest.
        """
        if not steps:
            raise WorkflowDefinitionError("race needs at least one step")
        branches = _branches("race", steps)
        return self._track(
            RaceStep(f"race({', '.join(b.name for b in branches)})", branches, bool(cancel_losers))
        )


def _branches(what: str, steps: tuple[Step[Any], ...]) -> tuple[LeafStep, ...]:
    branches: list[LeafStep] = []
    seen: set[str] = set()
    for step in steps:
        if isinstance(step, ContinueAsNewStep):
            raise WorkflowDefinitionError(
                f"{what} cannot take continue_as_new: it ends the run; yield it on its own"
            )
        if isinstance(step, (GatherStep, RaceStep)):
            raise WorkflowDefinitionError(
                f"{what} cannot take {step.describe()}: gathers and races do not nest; pass "
                "leaf steps (ctx.run, ctx.sleep, ...), or yield the inner one first"
            )
        if not is_leaf(step):
            raise WorkflowDefinitionError(
                f"{what} takes steps built by ctx (ctx.run, ctx.sleep, ...), got {step!r}"
            )
        if step.name in seen:
            raise WorkflowDefinitionError(
                f"{what} has two branches named {step.name!r}; give each its own name"
            )
        seen.add(step.name)
        branches.append(step)
    return tuple(branches)


class _HandMade(StepTracker):
    """The tracker of a context made by hand: nothing watches its steps."""

    __slots__ = ()


def _check_received(received: Received[Any, Any], what: str) -> Received[Any, Any]:
    if not isinstance(received, Received):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise WorkflowDefinitionError(
            f"{what} takes the update that ctx.receive gave, got {received!r}"
        )
    return received


def _new_run_patches(patch_id: str, deprecated: bool) -> bool:
    del patch_id
    return not deprecated


def _check_patch_id(patch_id: object) -> str:
    if not isinstance(patch_id, str) or not patch_id:
        raise WorkflowDefinitionError(f"a patch id must be a non-empty string, got {patch_id!r}")
    return patch_id


@dataclass(frozen=True, slots=True)
class StepDefaults:
    """Options a ``@step`` decorator attaches to a step function."""

    retry: RetryPolicy | None = None
    timeout: timedelta | None = None
    atomic: bool = False
    concurrency: Limit[KeySpec] | None = None
    rate: Rate[KeySpec] | None = None


@dataclass(frozen=True, slots=True)
class _StepSpec:
    """What ``ctx.run`` needs of a function, cached on it: options and result adapter."""

    adapter: TypeAdapter[Any]
    retry: RetryPolicy | None = None
    timeout: timedelta | None = None
    atomic: bool = False
    flow: FlowControl | None = None


def _step_spec(fn: object, name: object) -> _StepSpec:
    if not callable(fn):
        raise WorkflowDefinitionError(f"ctx.run({name!r}, ...) needs a callable, got {fn!r}")
    defaults: StepDefaults = getattr(fn, "__hookflow_step__", None) or StepDefaults()
    flow = flow_control(fn, defaults.concurrency, defaults.rate)
    spec = _StepSpec(return_adapter(fn), defaults.retry, defaults.timeout, defaults.atomic, flow)
    # A builtin or bound method takes no attribute: computed again next time, still correct.
    with contextlib.suppress(AttributeError, TypeError):
        fn.__hookflow_spec__ = spec  # type: ignore[attr-defined]  # a cache on the function
    return spec


F = TypeVar("F", bound=Callable[..., Any])


@overload
def step(
    *,
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
    atomic: bool = False,
    concurrency: Limit[str] | Limit[None] | None = None,
    rate: Rate[str] | Rate[None] | None = None,
) -> Callable[[F], F]: ...
@overload
def step(
    *,
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
    atomic: bool = False,
    concurrency: Limit[Callable[P, str]] | Limit[str] | Limit[None] | None = None,
    rate: Rate[Callable[P, str]] | Rate[str] | Rate[None] | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
def step(
    *,
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
    atomic: bool = False,
    concurrency: Limit[Any] | None = None,
    rate: Rate[Any] | None = None,
) -> Callable[[F], F]:
    """Give a step function default options for every ``ctx.run`` of it.

    The function is returned unchanged (still callable, same type), with the
    options attached::

        @step(retry=RetryPolicy(maximum_attempts=5), atomic=True)
        def reserve_stock(order_id: int) -> Reservation: ...

    ``concurrency`` and ``rate`` limit the step's attempts per key (see
    "Flow control" in the README). A key function must take the step
    function's parameters, which both type checkers verify::

        def by_user(user_id: int, amount: int) -> str:
            return f"user:{user_id}"

        @step(concurrency=Limit(5, key=by_user), rate=Rate(10, per=timedelta(seconds=1)))
        def charge(user_id: int, amount: int) -> Receipt: ...

    Raises:
        WorkflowDefinitionError: a key template names no parameter of the
            function.
    """
    defaults = StepDefaults(
        retry=retry,
        timeout=as_timedelta(timeout) if timeout is not None else None,
        atomic=atomic,
        concurrency=concurrency,
        rate=rate,
    )

    def decorate(fn: F) -> F:
        flow_control(fn, concurrency, rate)  # a bad template fails at import, not mid-run
        fn.__hookflow_step__ = defaults  # type: ignore[attr-defined]  # options ride on the function
        with contextlib.suppress(AttributeError):
            del fn.__hookflow_spec__  # type: ignore[attr-defined]  # drop a stale cached spec
        return fn

    return decorate
