"""Flow control: per-key concurrency and rate limits on steps.

``Limit`` caps how many attempts of steps with the same key run at once,
anywhere; ``Rate`` caps how many attempts of them start per period. Both are
set with ``@step(concurrency=..., rate=...)`` or ``.options(...)`` on a step.
The key is a string template filled from the step's arguments
(``"user:{user_id}"``), or a function taking the step's parameters and
returning the key (type-checked against the step function's signature by
``@step``), or None for one key per step function.

Enforcement sits in the claim: under a lock on the key, a step is claimed
only if fewer than ``max`` steps of the key hold a live lease and fewer than
``count`` attempts of it started in the last ``per``. A step denied a slot is
neither failed nor charged an attempt: its run waits, and is woken when a
holder of the key settles its step, or at the latest when the first holder's
lease (or the rate's window) runs out.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

from typing_extensions import TypeIs

from .exceptions import WorkflowDefinitionError

__all__ = ["FlowControl", "FlowGate", "Limit", "Rate", "flow_control"]

KeySpec = str | Callable[..., str] | None
K_co = TypeVar("K_co", bound=KeySpec, covariant=True)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True, init=False)
class Limit(Generic[K_co]):
    """At most ``max`` attempts of steps with the same key run at the same time.

    ``Limit(5)`` keys on the step function (one key for all its calls);
    ``Limit(5, key="user:{user_id}")`` fills a ``str.format`` template from
    the step's arguments by parameter name (``{{`` for a literal brace);
    ``Limit(5, key=by_user)`` calls ``by_user`` with the step's arguments,
    and ``@step`` checks that its parameters are the step function's.

    Attributes:
        max: how many may run at once (at least 1).
        key: the key: a template, a function returning it, or None.
    """

    max: int
    key: K_co

    @overload
    def __init__(self: Limit[None], max: int, key: None = None) -> None: ...
    @overload
    def __init__(self, max: int, key: K_co) -> None: ...
    def __init__(self, max: int, key: object = None) -> None:
        _check_count(max, "Limit.max")
        _check_key(key, "Limit")
        object.__setattr__(self, "max", max)
        object.__setattr__(self, "key", key)


@dataclass(frozen=True, slots=True, init=False)
class Rate(Generic[K_co]):
    """At most ``count`` attempts of steps with the same key start per ``per``.

    A sliding window: an attempt may start when fewer than ``count`` attempts
    of the key started in the ``per`` before it. The key is given as for
    ``Limit``; without one, a step's ``Rate`` shares its ``Limit``'s key (or,
    with no ``Limit``, keys on the step function).

    Attributes:
        count: starts allowed per period (at least 1).
        per: the period (more than zero; seconds are accepted).
        key: the key: a template, a function returning it, or None.
    """

    count: int
    per: timedelta
    key: K_co

    @overload
    def __init__(
        self: Rate[None], count: int, per: timedelta | float = ..., key: None = None
    ) -> None: ...
    @overload
    def __init__(self, count: int, per: timedelta | float = ..., *, key: K_co) -> None: ...
    def __init__(self, count: int, per: timedelta | float = _SECOND, key: object = None) -> None:
        _check_count(count, "Rate.count")
        per = _as_period(per)
        if per <= timedelta(0):
            raise WorkflowDefinitionError(f"Rate.per must be more than zero, got {per}")
        _check_key(key, "Rate")
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "key", key)


@dataclass(frozen=True, slots=True)
class FlowGate:
    """One key a claim must pass, with the limits it has there.

    Attributes:
        key: the resolved key.
        max_active: at most this many live leases on the key, or None.
        rate: at most this many starts per ``period``, or None.
        period: the rate's window.
    """

    key: str
    max_active: int | None = None
    rate: int | None = None
    period: timedelta | None = None


@dataclass(frozen=True, slots=True)
class FlowControl:
    """A step's flow control: its limits, resolved to gates from its arguments."""

    fn: Callable[..., Any]
    concurrency: Limit[KeySpec] | None = None
    rate: Rate[KeySpec] | None = None

    def gates(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[FlowGate, ...]:
        """The gates of one call, in key order (the order their locks are taken).

        Raises:
            WorkflowDefinitionError: a key template or function failed.
        """
        gates: dict[str, FlowGate] = {}
        limit_key: str | None = None
        if self.concurrency is not None:
            limit_key = self._key(self.concurrency.key, args, kwargs, "concurrency")
            gates[limit_key] = FlowGate(limit_key, max_active=self.concurrency.max)
        if self.rate is not None:
            if self.rate.key is None and limit_key is not None:
                rate_key = limit_key
            else:
                rate_key = self._key(self.rate.key, args, kwargs, "rate")
            found = gates.get(rate_key)
            gates[rate_key] = FlowGate(
                rate_key,
                max_active=found.max_active if found is not None else None,
                rate=self.rate.count,
                period=self.rate.per,
            )
        return tuple(gates[key] for key in sorted(gates))

    def _key(
        self, spec: KeySpec, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str
    ) -> str:
        fn = self.fn
        if spec is None:
            return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
        try:
            if isinstance(spec, str):
                bound = inspect.signature(fn).bind(*args, **kwargs)
                bound.apply_defaults()
                key: object = spec.format_map(bound.arguments)
            else:
                key = spec(*args, **kwargs)
        except Exception as exc:
            raise WorkflowDefinitionError(
                f"the {what} key of step function {_name(fn)} could not be computed: {exc!r}"
            ) from exc
        if not _is_key(key):
            raise WorkflowDefinitionError(
                f"the {what} key of step function {_name(fn)} must be a non-empty string, "
                f"got {key!r}"
            )
        return key


def flow_control(
    fn: Callable[..., Any], concurrency: Limit[KeySpec] | None, rate: Rate[KeySpec] | None
) -> FlowControl | None:
    """The flow control of ``fn`` with these limits; None without any.

    Raises:
        WorkflowDefinitionError: a key template names no parameter of ``fn``.
    """
    if concurrency is None and rate is None:
        return None
    if concurrency is not None and not isinstance(concurrency, Limit):  # pyright: ignore[reportUnnecessaryIsInstance]  # untyped callers
        raise WorkflowDefinitionError(f"concurrency= takes a Limit, got {concurrency!r}")
    if rate is not None and not isinstance(rate, Rate):  # pyright: ignore[reportUnnecessaryIsInstance]  # untyped callers
        raise WorkflowDefinitionError(f"rate= takes a Rate, got {rate!r}")
    for spec in (concurrency.key if concurrency else None, rate.key if rate else None):
        if isinstance(spec, str):
            _check_template(fn, spec)
    return FlowControl(fn, concurrency, rate)


def _check_count(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkflowDefinitionError(f"{what} must be an integer >= 1, got {value!r}")


def _as_period(value: object) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise WorkflowDefinitionError(f"Rate.per must be a timedelta or seconds, got {value!r}")
    return value


def _is_key(value: object) -> TypeIs[str]:
    return isinstance(value, str) and bool(value)


def _check_key(key: object, what: str) -> None:
    if key is None or callable(key):
        return
    if not isinstance(key, str) or not key:
        raise WorkflowDefinitionError(
            f"{what}.key must be a non-empty string, a function or None, got {key!r}"
        )
    try:
        list(string.Formatter().parse(key))
    except ValueError as exc:
        raise WorkflowDefinitionError(f"{what}.key {key!r} is not a valid template: {exc}") from exc


def _check_template(fn: Callable[..., Any], template: str) -> None:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # no signature to check against: checked when the key is filled in
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        root = field_name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise WorkflowDefinitionError(
                f"key template {template!r} must name parameters of {_name(fn)}, "
                f"as {{name}}; got {{{field_name}}}"
            )
        if root not in parameters:
            raise WorkflowDefinitionError(
                f"key template {template!r} names {root!r}, which is not a parameter of "
                f"{_name(fn)} (its parameters: {', '.join(parameters) or 'none'})"
            )


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))
