"""Defaults, duration parsing and retry back-off of the QStash-compatible server."""

from __future__ import annotations

import ast
import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEDUPLICATION_WINDOW",
    "DEFAULT_CURRENT_SIGNING_KEY",
    "DEFAULT_NEXT_SIGNING_KEY",
    "DEFAULT_RETRIES",
    "DEFAULT_TOKEN",
    "MAX_BACKOFF",
    "RetryDelayError",
    "compile_retry_delay",
    "default_backoff",
    "parse_duration",
]

# The same values as Upstash's own dev server, so the two are swappable.
DEFAULT_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
DEFAULT_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
DEFAULT_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"

DEFAULT_RETRIES = 3
"""Retries after the first attempt when ``Upstash-Retries`` is absent."""

MAX_BACKOFF = 86_400.0
"""QStash caps every retry delay at one day."""

DEDUPLICATION_WINDOW = 600.0
"""Seconds during which a deduplication id (or content hash) is remembered."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse a QStash duration such as ``"10s"``, ``"5m"``, ``"1d"`` or ``"3d5h12m"``.

    A bare number counts as seconds, as the QStash API accepts for delays.

    Args:
        text: The header value.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: If ``text`` is not a duration.
    """
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(value):
        raise ValueError(f"invalid duration: {text!r}")
    return total


def default_backoff(retry: int) -> float:
    """Return QStash's delay before retry number ``retry`` (1 for the first retry).

    Args:
        retry: How many times the message has been retried, counting the
            retry about to be scheduled.

    Returns:
        ``min(86400, e ** (2.5 * retry))`` seconds.
    """
    # math.exp overflows long before the cap matters; the cap is reached at retry 5.
    return MAX_BACKOFF if retry >= 5 else min(MAX_BACKOFF, math.exp(2.5 * retry))


class RetryDelayError(ValueError):
    """An ``Upstash-Retry-Delay`` expression uses syntax QStash does not allow."""


# Each function takes its evaluated arguments as a list; a wrong arity
# surfaces as IndexError and is reported as bad syntax.
_FUNCTIONS: dict[str, Callable[[list[float]], float]] = {
    "pow": lambda args: math.pow(args[0], args[1]),
    "sqrt": lambda args: math.sqrt(args[0]),
    "abs": lambda args: math.fabs(args[0]),
    "exp": lambda args: math.exp(args[0]),
    "floor": lambda args: float(math.floor(args[0])),
    "ceil": lambda args: float(math.ceil(args[0])),
    "round": lambda args: float(round(args[0])),
    "min": min,
    "max": max,
}

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}


def _evaluate(node: ast.expr, retried: int) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "retried":
        return float(retried)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand, retried)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left, retried), _evaluate(node.right, retried))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        arguments = [_evaluate(argument, retried) for argument in node.args]
        try:
            return _FUNCTIONS[node.func.id](arguments)
        except (IndexError, ValueError) as error:
            raise RetryDelayError(f"bad call to {node.func.id}: {error}") from error
    raise RetryDelayError(f"unsupported retry delay syntax: {ast.dump(node)}")


def compile_retry_delay(expression: str) -> Callable[[int], float]:
    """Compile an ``Upstash-Retry-Delay`` expression.

    The expression is QStash's small arithmetic language: numbers, ``+ - * /
    %``, the variable ``retried`` (0 for the first retry) and the functions
    ``pow sqrt abs exp floor ceil round min max``. Its value is milliseconds.
    It is parsed with :mod:`ast` and walked by hand, never passed to ``eval``.

    Args:
        expression: The header value.

    Returns:
        A function from ``retried`` to the delay in seconds.

    Raises:
        RetryDelayError: If the expression uses anything else.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise RetryDelayError(f"invalid retry delay: {expression!r}") from error
    body = tree.body
    _evaluate(body, 0)  # Reject bad syntax at publish time rather than at the first retry.

    def delay(retried: int) -> float:
        return min(MAX_BACKOFF, max(0.0, _evaluate(body, retried) / 1000.0))

    return delay
