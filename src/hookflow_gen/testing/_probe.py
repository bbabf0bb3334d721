"""Watching a workflow body for reads of the wall clock and of ``random``.

For the length of a check, the module-level clock and randomness functions
of ``time``, ``random`` and ``uuid`` (and ``django.utils.timezone.now`` once
Django is imported) are replaced by stand-ins, and so are the names
``datetime`` and ``date`` (or the ``datetime`` module) in the modules that
define the watched workflows. A stand-in behaves exactly like the original
except while a watched workflow *body* runs (inside the generator's
``send`` / ``throw`` / ``close``, never while a step function runs): then it
records who called it, and returns the check's fake clock shifted by an
amount that differs between the check's executions, or numbers from a
``random.Random`` seeded per execution (every other one moved to the other
half of its range). A workflow whose steps depend on those values therefore
behaves differently when it is resumed, and the check sees it.

``datetime.now()`` cannot be intercepted on the ``datetime`` type itself (a
C type), hence the subclasses bound in the workflow's own module: they are
real subclasses (``isinstance``, annotations and pydantic schemas work as
before), but a read through another module's ``from datetime import
datetime`` is not seen.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema

__all__ = ["WATCHED", "Probe", "Read", "Watched"]

_REAL_DATETIME = _dt.datetime
_REAL_DATE = _dt.date

# A different shift for every execution of the check: each unit moves the
# day, the half-day, the minute and the second's parity at once.
_SKEW = _dt.timedelta(days=1, hours=13, minutes=7, seconds=31, microseconds=1)

_TIME_FUNCTIONS = (
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
)
_RANDOM_STATE = ("getstate", "setstate", "seed")


def _random_functions() -> tuple[str, ...]:
    shared = getattr(random, "_inst", None)
    return tuple(
        sorted(
            name
            for name in dir(random)
            if not name.startswith("_")
            and name not in _RANDOM_STATE
            and getattr(getattr(random, name), "__self__", None) is shared
        )
    )


_RANDOM_FUNCTIONS = _random_functions()
_UUID_FUNCTIONS = ("uuid1", "uuid4")

#: What the probe watches, for reports.
WATCHED = (
    f"time.{{{', '.join(_TIME_FUNCTIONS)}}}(), random.{{{', '.join(_RANDOM_FUNCTIONS)}}}(), "
    "uuid.{uuid1, uuid4}() and django.utils.timezone.now() (once Django is imported) wherever "
    "the body calls them, and datetime.{now, utcnow, today}() and date.today() through the "
    "names the workflow function's own module binds to datetime, date or the datetime module"
)


class _ShiftedRandom(random.Random):
    """A seeded ``Random`` whose draws land in the other half of their range when shifted.

    Every other execution of the check is shifted, so a branch such as
    ``random.random() < 0.5`` goes the other way on a resumed run.
    """

    def __init__(self, seed: str, *, shift: bool) -> None:
        super().__init__(seed)
        self._shift = shift

    def random(self) -> float:
        value = super().random()
        return (value + 0.5) % 1.0 if self._shift else value

    def getrandbits(self, k: int, /) -> int:
        value = super().getrandbits(k)
        return value ^ (1 << (k - 1)) if self._shift and k > 0 else value


@dataclass(frozen=True, slots=True)
class Read:
    """One place where workflow code read the clock or ``random``.

    Attributes:
        what: the function called, e.g. ``"datetime.now()"``.
        where: ``file:line (function)`` of the caller.
    """

    what: str
    where: str


class Probe:
    """Records reads made while a watched body runs; see the module docstring."""

    def __init__(self) -> None:
        self.reads: dict[Read, int] = {}
        #: How many watched bodies are running (nested starts make it more than 1).
        self.active = 0
        self._now: Callable[[], _dt.datetime] = lambda: _REAL_DATETIME(2026, 1, 1, tzinfo=_dt.UTC)
        self._skew = _dt.timedelta(0)
        self._random: random.Random = _ShiftedRandom("hookflow-check-0", shift=False)

    def begin(self, execution: int, now: Callable[[], _dt.datetime]) -> None:
        """Start execution number ``execution`` of the check, on the clock ``now``."""
        self._now = now
        self._skew = _SKEW * execution
        self._random = _ShiftedRandom(f"hookflow-check-{execution}", shift=execution % 2 == 1)

    def now(self) -> _dt.datetime:
        """The time the stand-ins report in a body: the fake clock, shifted per execution."""
        return self._now() + self._skew

    def record(self, what: str, depth: int = 2) -> None:
        """Note a read by the caller ``depth`` frames up (logging's own reads are not noted)."""
        frame = sys._getframe(depth)  # pyright: ignore[reportPrivateUsage]  # the caller's place
        if frame.f_globals.get("__name__") == "logging":
            return  # a log record's timestamp: not the workflow's logic
        code = frame.f_code
        filename = code.co_filename
        with contextlib.suppress(ValueError):
            filename = os.path.relpath(filename)
        read = Read(what, f"{filename}:{frame.f_lineno} ({code.co_name})")
        self.reads[read] = self.reads.get(read, 0) + 1

    # -- installing the stand-ins for the length of a check -----------------------

    @contextlib.contextmanager
    def installed(self, namespaces: Iterable[dict[str, Any]]) -> Generator[None, None, None]:
        """Put the stand-ins in place (and in ``namespaces``, the workflows' module globals)."""
        swaps: list[tuple[Any, str, object, object]] = []
        targets: list[tuple[Any, str, Callable[..., Any]]] = []
        targets += [(time, name, self._time_function(name)) for name in _TIME_FUNCTIONS]
        targets += [(random, name, self._random_function(name)) for name in _RANDOM_FUNCTIONS]
        targets += [(uuid, name, self._uuid_function(name)) for name in _UUID_FUNCTIONS]
        timezone = sys.modules.get("django.utils.timezone")
        if timezone is not None:
            targets.append((timezone, "now", self._django_now(timezone.now)))
        by_id: dict[int, object] = {}
        for module, name, replacement in targets:
            original: object = getattr(module, name)
            by_id[id(original)] = replacement
            swaps.append((module, name, original, replacement))
        datetime_class, date_class = _watched_classes(self)
        by_id[id(_REAL_DATETIME)] = datetime_class
        by_id[id(_REAL_DATE)] = date_class
        by_id[id(_dt)] = _DatetimeModuleStandIn(datetime_class, date_class)
        seen: set[int] = set()
        for namespace in namespaces:
            if id(namespace) in seen:
                continue
            seen.add(id(namespace))
            value: object
            for name, value in list(namespace.items()):
                stand_in = by_id.get(id(value))
                if stand_in is not None and not name.startswith("__"):
                    swaps.append((namespace, name, value, stand_in))
        for owner, name, _, installed in swaps:
            _set(owner, name, installed)
        try:
            yield
        finally:
            for owner, name, before, installed in reversed(swaps):
                if _get(owner, name) is installed:  # unless someone rebound it meanwhile
                    _set(owner, name, before)

    def _time_function(self, name: str) -> Callable[[], float | int]:
        original: Callable[[], float | int] = getattr(time, name)
        label = f"time.{name}()"
        in_ns = name.endswith("_ns")

        def stand_in() -> float | int:
            if not self.active:
                return original()
            self.record(label)
            seconds = self.now().timestamp()
            return int(seconds * 1e9) if in_ns else seconds

        return stand_in

    def _random_function(self, name: str) -> Callable[..., Any]:
        original: Callable[..., Any] = getattr(random, name)
        label = f"random.{name}()"

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            self.record(label)
            return getattr(self._random, name)(*args, **kwargs)

        return stand_in

    def _uuid_function(self, name: str) -> Callable[..., uuid.UUID]:
        original: Callable[..., uuid.UUID] = getattr(uuid, name)
        label = f"uuid.{name}()"
        version = 1 if name == "uuid1" else 4

        def stand_in(*args: Any, **kwargs: Any) -> uuid.UUID:
            if not self.active:
                return original(*args, **kwargs)
            self.record(label)
            return uuid.UUID(int=self._random.getrandbits(128), version=version)

        return stand_in

    def _django_now(self, original: Callable[[], _dt.datetime]) -> Callable[[], _dt.datetime]:
        def stand_in() -> _dt.datetime:
            if not self.active:
                return original()
            self.record("django.utils.timezone.now()")
            return self.now()

        return stand_in


def _get(owner: Any, name: str) -> object:
    if isinstance(owner, dict):
        namespace = cast("dict[str, object]", owner)
        return namespace.get(name)
    value: object = getattr(owner, name, None)
    return value


def _set(owner: Any, name: str, value: object) -> None:
    if isinstance(owner, dict):
        namespace = cast("dict[str, object]", owner)
        namespace[name] = value
    else:
        setattr(owner, name, value)


class _LooksLikeReal(type):
    """Metaclass of the stand-in classes: ``isinstance`` answers as for the real class."""

    _real: type

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls._real)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, cls._real)


def _watched_classes(probe: Probe) -> tuple[type[_dt.datetime], type[_dt.date]]:
    """Subclasses of ``datetime`` and ``date`` whose ``now``/``today`` are watched.

    Constructing one gives a plain ``datetime``/``date``; as an annotation,
    pydantic sees the real type.
    """

    class WatchedDatetime(_dt.datetime, metaclass=_LooksLikeReal):
        _real = _REAL_DATETIME

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return _REAL_DATETIME(*args, **kwargs)

        @classmethod
        def __get_pydantic_core_schema__(
            cls, source: Any, handler: GetCoreSchemaHandler
        ) -> CoreSchema:
            return handler.generate_schema(_REAL_DATETIME)

        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> Any:
            if not probe.active:
                return _REAL_DATETIME.now(tz)
            probe.record("datetime.now()")
            now = probe.now()
            return now.astimezone(tz) if tz is not None else now.replace(tzinfo=None)

        @classmethod
        def utcnow(cls) -> Any:
            if not probe.active:
                return _REAL_DATETIME.now(_dt.UTC).replace(tzinfo=None)
            probe.record("datetime.utcnow()")
            return probe.now().replace(tzinfo=None)

        @classmethod
        def today(cls) -> Any:
            if not probe.active:
                return _REAL_DATETIME.today()
            probe.record("datetime.today()")
            return probe.now().replace(tzinfo=None)

    class WatchedDate(_dt.date, metaclass=_LooksLikeReal):
        _real = _REAL_DATE

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return _REAL_DATE(*args, **kwargs)

        @classmethod
        def __get_pydantic_core_schema__(
            cls, source: Any, handler: GetCoreSchemaHandler
        ) -> CoreSchema:
            return handler.generate_schema(_REAL_DATE)

        @classmethod
        def today(cls) -> Any:
            if not probe.active:
                return _REAL_DATE.today()
            probe.record("date.today()")
            return probe.now().date()

    for cls, real in ((WatchedDatetime, _REAL_DATETIME), (WatchedDate, _REAL_DATE)):
        cls.__name__ = cls.__qualname__ = real.__name__
        cls.__module__ = real.__module__
    return WatchedDatetime, WatchedDate


class _DatetimeModuleStandIn:
    """Stands for the ``datetime`` module in a watched module (``import datetime``)."""

    def __init__(self, datetime: type[_dt.datetime], date: type[_dt.date]) -> None:
        self.datetime = datetime
        self.date = date

    def __getattr__(self, name: str) -> Any:
        return getattr(_dt, name)


class Watched:
    """A workflow generator whose every resumption counts as a watched body.

    The engine drives it with ``send``, ``throw`` and ``close`` like the
    generator it wraps.
    """

    __slots__ = ("_gen", "_probe")

    def __init__(self, gen: Generator[Any, Any, Any], probe: Probe) -> None:
        self._gen = gen
        self._probe = probe

    def __iter__(self) -> Watched:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        self._probe.active += 1
        try:
            return self._gen.send(value)
        finally:
            self._probe.active -= 1

    def throw(self, exc: BaseException) -> Any:
        self._probe.active += 1
        try:
            return self._gen.throw(exc)
        finally:
            self._probe.active -= 1

    def close(self) -> None:
        self._probe.active += 1
        try:
            self._gen.close()
        finally:
            self._probe.active -= 1
