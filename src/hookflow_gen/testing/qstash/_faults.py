"""Fault injection: make deliveries misbehave the ways at-least-once delivery allows."""

from __future__ import annotations

import dataclasses
import threading
from typing import Literal

__all__ = ["FaultPlan", "Faults"]

_FaultKind = Literal["duplicate", "concurrent", "delay", "drop_answer"]


@dataclasses.dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one delivery attempt; the default plan does nothing.

    Attributes:
        duplicates: Extra copies sent one after another once the first answers.
        concurrent_copies: Copies sent at the same time, in parallel threads
            (1 means no concurrency).
        extra_delay: QStash seconds (scaled by ``time_scale``) the attempt is
            held back beyond its due time.
        drop_answer: Send the request, then ignore the answer as if the
            connection dropped, so the attempt counts as failed and is retried.
        replay: Extra copies reuse the first copy's ``Upstash-Signature``
            (a replayed request) instead of carrying fresh signatures.
    """

    duplicates: int = 0
    concurrent_copies: int = 1
    extra_delay: float = 0.0
    drop_answer: bool = False
    replay: bool = False

    @property
    def description(self) -> str | None:
        """A short text naming the faults in the plan, or ``None`` for none."""
        parts: list[str] = []
        if self.duplicates:
            parts.append(f"duplicate x{self.duplicates}")
        if self.concurrent_copies > 1:
            parts.append(f"concurrent x{self.concurrent_copies}")
        if self.extra_delay:
            parts.append(f"delay {self.extra_delay:g}s")
        if self.drop_answer:
            parts.append("drop answer")
        return ", ".join(parts) or None


@dataclasses.dataclass(slots=True)
class _Rule:
    kind: _FaultKind
    remaining: int | None
    url: str | None
    amount: float
    replay: bool = False


class Faults:
    """Fault-injection settings of a server, applied as attempts come due.

    Each call arms a rule for the next ``n`` delivery attempts whose URL
    starts with ``url`` (every URL when ``None``); ``n=None`` keeps the rule
    armed until :meth:`clear`. Rules of different kinds combine on the same
    attempt. Callback deliveries are attempts too, so pass ``url`` to aim at
    one destination. Safe to call from any thread.

    Example:
        >>> with QStashServer(time_scale=0.001) as qs:  # doctest: +SKIP
        ...     qs.faults.duplicate_next()
        ...     qs.faults.drop_answer(url="http://127.0.0.1:9000/step")
    """

    def __init__(self) -> None:
        """Create an empty set of rules."""
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    def duplicate_next(
        self,
        n: int | None = 1,
        *,
        copies: int = 1,
        url: str | None = None,
        replay: bool = False,
    ) -> None:
        """Deliver the next ``n`` attempts again, ``copies`` more times, one after another.

        The first answer decides the outcome; the extra copies carry the same
        message id and ``Upstash-Retried`` value, as a redelivery would.

        Args:
            n: How many attempts to affect; ``None`` for all until cleared.
            copies: Extra sequential copies per attempt.
            url: Only attempts whose URL starts with this prefix.
            replay: Reuse the first copy's signature (a replayed request)
                rather than signing each copy afresh as QStash would.
        """
        self._arm("duplicate", n, url, copies, replay=replay)

    def concurrent_copies(
        self,
        n: int | None = 1,
        *,
        copies: int = 2,
        url: str | None = None,
        replay: bool = False,
    ) -> None:
        """Deliver the next ``n`` attempts as ``copies`` simultaneous requests.

        The copies start together on separate threads; copy 0's answer
        decides the outcome.

        Args:
            n: How many attempts to affect; ``None`` for all until cleared.
            copies: Total parallel requests per attempt (at least 2 to matter).
            url: Only attempts whose URL starts with this prefix.
            replay: Reuse copy 0's signature on the other copies.
        """
        self._arm("concurrent", n, url, copies, replay=replay)

    def delay_delivery(self, seconds: float, *, n: int | None = 1, url: str | None = None) -> None:
        """Hold the next ``n`` attempts back by ``seconds`` beyond their due time.

        Args:
            seconds: QStash seconds, compressed by the server's ``time_scale``.
            n: How many attempts to affect; ``None`` for all until cleared.
            url: Only attempts whose URL starts with this prefix.
        """
        self._arm("delay", n, url, seconds)

    def drop_answer(self, n: int | None = 1, *, url: str | None = None) -> None:
        """Make the next ``n`` requests, then throw their answers away.

        The destination does the work but the attempt counts as a connection
        failure, so the message is retried per back-off (or dead-lettered).

        Args:
            n: How many attempts to affect; ``None`` for all until cleared.
            url: Only attempts whose URL starts with this prefix.
        """
        self._arm("drop_answer", n, url, 1)

    def clear(self) -> None:
        """Disarm every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def armed(self) -> int:
        """How many rules are still armed."""
        with self._lock:
            return len(self._rules)

    def take(self, url: str) -> FaultPlan:
        """Consume the rules matching ``url`` and return the plan for one attempt.

        The server calls this once per attempt, when the attempt comes due.

        Args:
            url: The URL about to be called.

        Returns:
            The faults to apply.
        """
        duplicates = 0
        concurrent = 1
        delay = 0.0
        drop = False
        replay = False
        with self._lock:
            for rule in list(self._rules):
                if rule.url is not None and not url.startswith(rule.url):
                    continue
                if rule.kind == "duplicate":
                    duplicates += int(rule.amount)
                elif rule.kind == "concurrent":
                    concurrent = max(concurrent, int(rule.amount))
                elif rule.kind == "delay":
                    delay += rule.amount
                else:
                    drop = True
                replay = replay or rule.replay
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
        return FaultPlan(
            duplicates=duplicates,
            concurrent_copies=concurrent,
            extra_delay=delay,
            drop_answer=drop,
            replay=replay,
        )

    def _arm(
        self,
        kind: _FaultKind,
        n: int | None,
        url: str | None,
        amount: float,
        *,
        replay: bool = False,
    ) -> None:
        if n is not None and n < 1:
            raise ValueError("n must be at least 1, or None for every attempt")
        if amount < 0:
            raise ValueError("the amount of a fault cannot be negative")
        with self._lock:
            self._rules.append(_Rule(kind=kind, remaining=n, url=url, amount=amount, replay=replay))
