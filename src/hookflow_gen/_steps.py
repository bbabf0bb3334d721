"""Step requests: what a workflow yields, one frozen value per step.

``yield from step`` is the typed idiom: ``Step[T].__iter__`` yields the step
itself once and returns what the engine sends back, so type checkers see
``x = yield from ctx.run("a", f)`` as the return type of ``f``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Never, TypeAlias, TypeVar

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypeIs

from ._codec import adapter_for

if TYPE_CHECKING:
    from ._flow import FlowControl, KeySpec, Limit, Rate
    from ._journal import ErrorInfo
    from ._updates import Update
    from ._workflow import Workflow

__all__ = [
    "CallResponse",
    "CallStep",
    "ContinueAsNewStep",
    "EventStep",
    "Flow",
    "GatherStep",
    "InvokeStep",
    "RaceStep",
    "ReplyStep",
    "RetryPolicy",
    "RunStep",
    "SleepStep",
    "Step",
    "Winner",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
I_co = TypeVar("I_co", bound=int, covariant=True)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is retried: exponential back-off, bounded.

    Attempt ``n`` (1-based) that fails is retried after
    ``min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval)``
    until ``maximum_attempts`` attempts were made. Exceptions whose class (or
    a base class) is in ``non_retryable_error_types``, and
    ``NonRetryableError``, fail the step at once.
    """

    maximum_attempts: int = 3
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    maximum_interval: timedelta = timedelta(minutes=5)
    non_retryable_error_types: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.maximum_attempts < 1:
            raise ValueError("RetryPolicy.maximum_attempts must be at least 1")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be at least 1")
        if self.initial_interval < timedelta(0) or self.maximum_interval < timedelta(0):
            raise ValueError("RetryPolicy intervals must not be negative")

    def delay(self, attempt: int) -> timedelta:
        """The back-off before retrying after failed attempt ``attempt`` (1-based)."""
        seconds = self.initial_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        if math.isinf(seconds) or seconds > self.maximum_interval.total_seconds():
            return self.maximum_interval
        return timedelta(seconds=seconds)

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` of a step that raised ``exc`` is retried."""
        from .exceptions import NonRetryableError

        if attempt >= self.maximum_attempts:
            return False
        return not isinstance(exc, (NonRetryableError, *self.non_retryable_error_types))

    def retries_error(self, error: ErrorInfo, attempt: int) -> bool:
        """Like ``retries``, for a recorded error (a failed child run), by type names.

        A cancelled child is never retried.
        """
        from .exceptions import NonRetryableError, RunCancelled

        if attempt >= self.maximum_attempts:
            return False
        stop: tuple[type[BaseException], ...] = (
            NonRetryableError,
            RunCancelled,
            *self.non_retryable_error_types,
        )
        return not any(error.caused_by(exc_type) for exc_type in stop)


NO_RETRY = RetryPolicy(maximum_attempts=1)


class CallResponse(BaseModel, Generic[T]):
    """The answer to an HTTP ``call`` step.

    Attributes:
        status: the HTTP status code: 2xx, unless the call was made with
            ``raise_for_status=False`` (then any status the server sent).
        headers: response headers, names in lower case.
        body: the body, parsed as JSON into the ``response_model`` given to
            ``ctx.call`` (raw text when none was given, and the raw text of
            a non-2xx answer under ``raise_for_status=False``).
    """

    status: int
    headers: dict[str, str]
    body: T

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300


class Step(Generic[T_co]):
    """A request a workflow yields to the engine; ``yield from`` it to get ``T_co``.

    Steps are frozen values built by ``Context`` methods. Every concrete step
    has a ``name``; its ``kind`` says what the engine does with it.
    """

    __slots__ = ()
    kind: ClassVar[str]
    name: str
    #: The step's concurrency and rate limits (only ``run`` steps have any).
    flow: FlowControl | None = None

    def __iter__(self) -> Generator[Step[Any], object, T_co]:
        value = yield self
        return value  # type: ignore[return-value]  # the engine sends the decoded T_co

    @property
    def leaves(self) -> tuple[LeafStep, ...]:
        """The steps the engine records for this request (a gather has several)."""
        return (self,)  # type: ignore[return-value]  # overridden by GatherStep

    def describe(self) -> str:
        """``run 'charge'``: the kind and name, as errors show them."""
        return f"{self.kind} {self.name!r}"


Flow: TypeAlias = Generator[Step[Any], object, R]
"""The return annotation of a workflow function: ``-> Flow[Receipt]``."""


_ANY_ADAPTER: TypeAdapter[Any] = adapter_for(Any)
_set = object.__setattr__


class RunStep(Step[T_co]):
    """Run ``fn(*args, **kwargs)`` once and record its result.

    Immutable, like every step. Written by hand rather than as a frozen
    dataclass because workflows build one per step on every replay: its
    fields live in one tuple, set once, which makes construction about four
    times cheaper.

    Attributes:
        name: the step name, part of the determinism check.
        fn: the step function (sync or ``async def``).
        args: positional arguments for ``fn``.
        kwargs: keyword arguments for ``fn``.
        retry: the retry policy; None means the workflow's or the default.
        timeout: how long one attempt may take, or None.
        atomic: run ``fn`` and record its result in one database
            transaction (only for functions that just touch the database).
        adapter: validates and (de)serialises the result.
        flow: the step's concurrency and rate limits, or None.
    """

    __slots__ = ("_fields",)
    kind: ClassVar[str] = "run"
    _fields: tuple[
        str,
        Callable[..., Any],
        tuple[Any, ...],
        Mapping[str, Any],
        RetryPolicy | None,
        timedelta | None,
        bool,
        TypeAdapter[Any],
        FlowControl | None,
    ]

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        atomic: bool = False,
        adapter: TypeAdapter[Any] = _ANY_ADAPTER,
        flow: FlowControl | None = None,
    ) -> None:
        _set(self, "_fields", (name, fn, args, kwargs or {}, retry, timeout, atomic, adapter, flow))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"steps are immutable; use .options(...) for a changed copy ({name})")

    def __repr__(self) -> str:
        name, fn, args, kwargs, retry, timeout, atomic, _, flow = self._fields
        fn_name = getattr(fn, "__qualname__", repr(fn))
        limits = ""
        if flow is not None:
            limits = f", concurrency={flow.concurrency!r}, rate={flow.rate!r}"
        return (
            f"RunStep(name={name!r}, fn={fn_name}, args={args!r}, kwargs={dict(kwargs)!r}, "
            f"retry={retry!r}, timeout={timeout!r}, atomic={atomic!r}{limits})"
        )

    @property
    def name(self) -> str:  # type: ignore[override]  # a read-only field
        return self._fields[0]

    @property
    def fn(self) -> Callable[..., Any]:
        return self._fields[1]

    @property
    def args(self) -> tuple[Any, ...]:
        return self._fields[2]

    @property
    def kwargs(self) -> Mapping[str, Any]:
        return self._fields[3]

    @property
    def retry(self) -> RetryPolicy | None:
        return self._fields[4]

    @property
    def timeout(self) -> timedelta | None:
        return self._fields[5]

    @property
    def atomic(self) -> bool:
        return self._fields[6]

    @property
    def adapter(self) -> TypeAdapter[Any]:
        return self._fields[7]

    @property
    def flow(self) -> FlowControl | None:  # type: ignore[override]  # a read-only field
        return self._fields[8]

    def options(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
        atomic: bool | None = None,
        concurrency: Limit[KeySpec] | None = None,
        rate: Rate[KeySpec] | None = None,
    ) -> RunStep[T_co]:
        """This step with other options: ``ctx.run(...).options(retry=RetryPolicy(...))``.

        ``concurrency`` and ``rate`` replace the step's ``Limit`` and ``Rate``
        (each kept when not given); see "Flow control" in the README. Their
        key functions are called with the step's arguments, unchecked here:
        ``@step`` checks them against the function's signature.
        """
        name, fn, args, kwargs, old_retry, old_timeout, old_atomic, adapter, flow = self._fields
        if concurrency is not None or rate is not None:
            from ._flow import flow_control

            if concurrency is None and flow is not None:
                concurrency = flow.concurrency
            if rate is None and flow is not None:
                rate = flow.rate
            flow = flow_control(fn, concurrency, rate)
        return RunStep(
            name,
            fn,
            args,
            kwargs,
            retry=retry if retry is not None else old_retry,
            timeout=as_timedelta(timeout) if timeout is not None else old_timeout,
            atomic=atomic if atomic is not None else old_atomic,
            adapter=adapter,
            flow=flow,
        )


@dataclass(frozen=True, slots=True, eq=False)
class SleepStep(Step[None]):
    """Wait for ``duration`` from the moment the step is first reached, or until ``until``."""

    kind: ClassVar[str] = "sleep"
    name: str
    duration: timedelta | None = None
    until: datetime | None = None
    adapter: TypeAdapter[Any] = field(default=adapter_for(None), repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class CallStep(Step[CallResponse[T]], Generic[T]):
    """Make an HTTP request; a 2xx answer is the result, anything else a failure.

    With ``raise_for_status=False`` every answer is the result, whatever its
    status (only a request that got no answer fails).
    """

    kind: ClassVar[str] = "call"
    name: str
    url: str
    method: str = "GET"
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    timeout: timedelta | None = None
    retry: RetryPolicy | None = None
    response_model: Any = str
    adapter: TypeAdapter[Any] = field(default=adapter_for(CallResponse[str]), repr=False)
    raise_for_status: bool = True

    def options(
        self, *, retry: RetryPolicy | None = None, timeout: timedelta | float | None = None
    ) -> CallStep[T]:
        """This step with other options."""
        return dataclasses.replace(
            self,
            retry=retry if retry is not None else self.retry,
            timeout=as_timedelta(timeout) if timeout is not None else self.timeout,
        )


@dataclass(frozen=True, slots=True, eq=False)
class EventStep(Step[T_co]):
    """Wait for an event sent with ``notify(key, payload)``, or until ``timeout``.

    With a timeout the result is None when the timeout passed first. A
    ``ctx.receive`` is one too, on its update's private key, with ``update``
    set: the definition that the admin sends an update of.
    """

    kind: ClassVar[str] = "event"
    name: str
    key: str
    model: Any
    timeout: timedelta | None = None
    adapter: TypeAdapter[Any] = field(default=adapter_for(Any), repr=False)
    event_adapter: TypeAdapter[Any] = field(default=adapter_for(Any), repr=False)
    update: Update[Any, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class InvokeStep(Step[T_co]):
    """Start a child workflow and wait for its result.

    With a ``retry`` policy a child run that fails is followed by a new
    child run (``<run id>-attempt-<n>``) after the policy's back-off.
    """

    kind: ClassVar[str] = "invoke"
    name: str
    workflow: Workflow[Any, Any]
    payload: Any
    run_id: str | None = None
    adapter: TypeAdapter[Any] = field(default=adapter_for(Any), repr=False)
    retry: RetryPolicy | None = None

    def options(self, *, retry: RetryPolicy | None = None) -> InvokeStep[T_co]:
        """This step with another retry policy for its child runs."""
        return dataclasses.replace(self, retry=retry if retry is not None else self.retry)


@dataclass(frozen=True, slots=True, eq=False)
class GatherStep(Step[T_co]):
    """Run several steps in parallel; the result is the tuple of their results."""

    kind: ClassVar[str] = "gather"
    name: str
    branches: tuple[LeafStep, ...]

    @property
    def leaves(self) -> tuple[LeafStep, ...]:
        """The branches, each recorded at its own consecutive position."""
        return self.branches


@dataclass(frozen=True, slots=True, eq=False)
class RaceStep(Step[T_co]):
    """Run several steps at once; the result is the first to settle, as a ``Winner``.

    With ``cancel_losers`` (the default) the losers still pending when the
    race is decided are settled as cancelled (a ``StepCancelled`` failure in
    the journal), so the run never waits on them; a loser already running is
    not interrupted, and what it returns is dropped. Without it the losers
    run on to their end while the workflow goes on; their results are
    recorded but not used, and a run that ends does not wait for them.
    """

    kind: ClassVar[str] = "race"
    name: str
    branches: tuple[LeafStep, ...]
    cancel_losers: bool = True

    @property
    def leaves(self) -> tuple[LeafStep, ...]:
        """The branches, each recorded at its own consecutive position."""
        return self.branches


@dataclass(frozen=True, slots=True)
class Winner(Generic[I_co, T_co]):
    """The branch that won a ``ctx.race``: its index, name and typed value.

    ``ctx.race(a, b)`` is typed ``Winner[Literal[0], A] | Winner[Literal[1], B]``,
    so ``if won.index == 0:`` narrows ``won.value`` to ``A`` in both mypy and
    pyright.

    Attributes:
        index: the winning branch's position among the race's arguments.
        name: the winning branch's step name.
        value: its result.
    """

    index: I_co
    name: str
    value: T_co


@dataclass(frozen=True, slots=True, eq=False)
class ContinueAsNewStep(Step[Never]):
    """End this run and start a fresh run of the same workflow with ``payload``.

    Built by ``ctx.continue_as_new``; nothing comes back from it (the run
    ends where it is yielded), so it is a ``Step[Never]`` and type checkers
    treat the code after ``yield from`` it as unreachable.

    Attributes:
        name: always ``"continue_as_new"``.
        workflow: the workflow's name (the running one's).
        payload: the new run's payload, as validated JSON text.
    """

    kind: ClassVar[str] = "continue_as_new"
    name: str
    workflow: str
    payload: str


@dataclass(frozen=True, slots=True, eq=False)
class ReplyStep(Step[None]):
    """Answer (or, with ``reason``, reject) an update the workflow received.

    The runtime records it the moment the workflow reaches it, writing the
    answer to the update in the same transaction, so a replay finds it
    recorded and never answers twice.

    Attributes:
        name: the update's name.
        update_id: the id of the update answered.
        answer: the answer as JSON text; None for a rejection.
        reason: why the update is rejected; None for an answer.
    """

    kind: ClassVar[str] = "reply"
    name: str
    update_id: str
    answer: str | None = None
    reason: str | None = None
    adapter: TypeAdapter[Any] = field(default=adapter_for(None), repr=False)

    @property
    def rejected(self) -> bool:
        """True for a rejection."""
        return self.reason is not None


LeafStep: TypeAlias = (
    RunStep[Any] | SleepStep | CallStep[Any] | EventStep[Any] | InvokeStep[Any] | ReplyStep
)
"""A step the engine records: every kind but gather and race."""


def is_leaf(step: object) -> TypeIs[LeafStep]:
    """True for every step kind the engine records (all but gather and race)."""
    return isinstance(step, (RunStep, SleepStep, CallStep, EventStep, InvokeStep, ReplyStep))


def is_step(value: object) -> TypeIs[Step[Any]]:
    """True for a step request built by a ``Context``."""
    return isinstance(value, Step)


def as_timedelta(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # pyright: ignore[reportUnnecessaryIsInstance]  # untyped callers
        from .exceptions import WorkflowDefinitionError

        raise WorkflowDefinitionError(f"expected a timedelta or seconds, got {value!r}")
    return timedelta(seconds=value)
