"""Watching a workflow body for reads of the wall clock and of ``random``.

While a watched workflow's body runs (inside the generator's ``send`` /
``throw``, never while a step function runs), the module-level clock and
randomness functions of ``time``, ``random`` and ``uuid`` (and
``django.utils.timezone.now`` once Django is imported) are replaced by
versions that record who called them, and the names ``datetime`` / ``date``
in the workflow's own module stand for look-alikes whose ``now()``,
``utcnow()`` and ``today()`` are recorded the same way.

The replacements do not return the real time: they return the check's fake
clock shifted by an amount that differs between the check's executions, and
numbers from a ``random.Random`` seeded per execution (every other one moved
to the other half of its range), so that a workflow whose steps depend on
them behaves differently when it is resumed, and the check sees it.

``datetime.now()`` cannot be intercepted on the ``datetime`` type itself (a
C type), hence the module-globals look-alikes: a read through another
module's ``from datetime import datetime`` is not seen.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["Probe", "Read", "Watched"]

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
    "the body calls them, and "
    "datetime.{now, utcnow, today}() and date.today() through the names the workflow "
    "function's own module binds to datetime, date or the datetime module"
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
        self._depth = 0
        self._now: Callable[[], _dt.datetime] = lambda: _REAL_DATETIME(2026, 1, 1, tzinfo=_dt.UTC)
        self._skew = _dt.timedelta(0)
        self._random: random.Random = _ShiftedRandom("hookflow-check-0", shift=False)
        self._saved: list[tuple[Any, str, object]] = []

    def begin(self, execution: int, now: Callable[[], _dt.datetime]) -> None:
        """Start execution number ``execution`` of the check, on the clock ``now``."""
        self._now = now
        self._skew = _SKEW * execution
        self._random = _ShiftedRandom(f"hookflow-check-{execution}", shift=execution % 2 == 1)

    # -- what the stand-ins return --------------------------------------------------

    def now(self) -> _dt.datetime:
        """The time the stand-ins report: the fake clock, shifted per execution."""
        return self._now() + self._skew

    def timestamp(self) -> float:
        return self.now().timestamp()

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

    # -- installing the stand-ins -------------------------------------------------

    @contextlib.contextmanager
    def watching(self, namespace: dict[str, Any]) -> Generator[None, None, None]:
        """Install the stand-ins (and in ``namespace``, the body's module globals)."""
        self._depth += 1
        if self._depth == 1:
            self._install(namespace)
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._uninstall()

    def _swap(self, owner: Any, name: str, value: object) -> None:
        if isinstance(owner, dict):
            namespace = cast("dict[str, object]", owner)
            self._saved.append((namespace, name, namespace[name]))
            namespace[name] = value
        else:
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

    def _install(self, namespace: dict[str, Any]) -> None:
        replaced: dict[int, object] = {}
        targets: list[tuple[Any, str, object]] = []
        targets += [(time, name, self._time_function(name)) for name in _TIME_FUNCTIONS]
        targets += [(random, name, self._random_function(name)) for name in _RANDOM_FUNCTIONS]
        targets += [(uuid, name, self._uuid_function(name)) for name in _UUID_FUNCTIONS]
        timezone = sys.modules.get("django.utils.timezone")
        if timezone is not None:
            targets.append((timezone, "now", self._django_now()))
        for module, name, replacement in targets:
            replaced[id(getattr(module, name))] = replacement
            self._swap(module, name, replacement)
        datetime_class = _DatetimeStandIn(self)
        date_class = _DateStandIn(self)
        replaced[id(_REAL_DATETIME)] = datetime_class
        replaced[id(_REAL_DATE)] = date_class
        replaced[id(_dt)] = _DatetimeModuleStandIn(datetime_class, date_class)
        for name, value in list(namespace.items()):
            found = replaced.get(id(value))
            if found is not None and not name.startswith("__"):
                self._swap(namespace, name, found)

    def _uninstall(self) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            if isinstance(owner, dict):
                cast("dict[str, object]", owner)[name] = value
            else:
                setattr(owner, name, value)

    def _time_function(self, name: str) -> Callable[[], float | int]:
        label = f"time.{name}()"

        def stand_in() -> float | int:
            self.record(label)
            seconds = self.timestamp()
            return int(seconds * 1e9) if name.endswith("_ns") else seconds

        return stand_in

    def _random_function(self, name: str) -> Callable[..., Any]:
        label = f"random.{name}()"

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            self.record(label)
            return getattr(self._random, name)(*args, **kwargs)

        return stand_in

    def _uuid_function(self, name: str) -> Callable[..., uuid.UUID]:
        label = f"uuid.{name}()"
        version = 1 if name == "uuid1" else 4

        def stand_in(*args: Any, **kwargs: Any) -> uuid.UUID:
            self.record(label)
            return uuid.UUID(int=self._random.getrandbits(128), version=version)

        return stand_in

    def _django_now(self) -> Callable[[], _dt.datetime]:
        def stand_in() -> _dt.datetime:
            self.record("django.utils.timezone.now()")
            return self.now()

        return stand_in


class _DatetimeStandIn:
    """Stands for ``datetime.datetime`` in a watched module: ``now()`` and co. are noted."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(_REAL_DATETIME, name)

    def __call__(self, *args: Any, **kwargs: Any) -> _dt.datetime:
        return _REAL_DATETIME(*args, **kwargs)

    def __instancecheck__(self, obj: object) -> bool:
        return isinstance(obj, _REAL_DATETIME)

    def __subclasscheck__(self, cls: type) -> bool:
        return issubclass(cls, _REAL_DATETIME)

    def __repr__(self) -> str:
        return repr(_REAL_DATETIME)

    def now(self, tz: _dt.tzinfo | None = None) -> _dt.datetime:
        self._probe.record("datetime.now()")
        now = self._probe.now()
        return now.astimezone(tz) if tz is not None else now.replace(tzinfo=None)

    def utcnow(self) -> _dt.datetime:
        self._probe.record("datetime.utcnow()")
        return self._probe.now().replace(tzinfo=None)

    def today(self) -> _dt.datetime:
        self._probe.record("datetime.today()")
        return self._probe.now().replace(tzinfo=None)


class _DateStandIn:
    """Stands for ``datetime.date`` in a watched module: ``today()`` is noted."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(_REAL_DATE, name)

    def __call__(self, *args: Any, **kwargs: Any) -> _dt.date:
        return _REAL_DATE(*args, **kwargs)

    def __instancecheck__(self, obj: object) -> bool:
        return isinstance(obj, _REAL_DATE)

    def __subclasscheck__(self, cls: type) -> bool:
        return issubclass(cls, _REAL_DATE)

    def __repr__(self) -> str:
        return repr(_REAL_DATE)

    def today(self) -> _dt.date:
        self._probe.record("date.today()")
        return self._probe.now().date()


class _DatetimeModuleStandIn:
    """Stands for the ``datetime`` module in a watched module (``import datetime``)."""

    def __init__(self, datetime: _DatetimeStandIn, date: _DateStandIn) -> None:
        self.datetime = datetime
        self.date = date

    def __getattr__(self, name: str) -> Any:
        return getattr(_dt, name)


class Watched:
    """A workflow generator whose every resumption runs under a ``Probe``.

    The engine drives it with ``send``, ``throw`` and ``close`` like the
    generator it wraps.
    """

    __slots__ = ("_gen", "_namespace", "_probe")

    def __init__(
        self, gen: Generator[Any, Any, Any], probe: Probe, namespace: dict[str, Any]
    ) -> None:
        self._gen = gen
        self._probe = probe
        self._namespace = namespace

    def __iter__(self) -> Watched:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        with self._probe.watching(self._namespace):
            return self._gen.send(value)

    def throw(self, exc: BaseException) -> Any:
        with self._probe.watching(self._namespace):
            return self._gen.throw(exc)

    def close(self) -> None:
        with self._probe.watching(self._namespace):
            self._gen.close()
