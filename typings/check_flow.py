"""Flow control's typing contract: key functions are checked against the step's parameters.

Checked by mypy --strict and pyright strict, never run. Each negative case
carries an ignore that both checkers must find necessary.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import assert_type

from pydantic import BaseModel

from hookflow_gen import Context, Flow, Limit, Rate, RunStep, step, workflow


class Receipt(BaseModel):
    amount: int


def by_user(user_id: int, amount: int) -> str:
    return f"user:{user_id}"


def by_name(name: str) -> str:
    return name


# A key function: its parameters must be the step function's.
@step(concurrency=Limit(5, key=by_user), rate=Rate(10, per=timedelta(seconds=1)))
def charge(user_id: int, amount: int) -> Receipt:
    return Receipt(amount=amount)


assert_type(charge(1, 2), Receipt)
assert_type(charge(user_id=1, amount=2), Receipt)
charge("1", 2)  # type: ignore[arg-type]  # the decorated function keeps its parameters
keyed: Limit[Callable[[int, int], str]] = Limit(5, key=by_user)
assert_type(Limit(5), Limit[None])
assert_type(Limit(5, key="user:{user_id}"), Limit[str])
assert_type(Rate(10), Rate[None])
assert_type(Rate(10, per=2.5, key="global"), Rate[str])


# A template or no key: the decorated function keeps its own type.
@step(concurrency=Limit(2, key="acct:{account}"), rate=Rate(3, per=60))
def refund(account: str, cents: int = 0) -> int:
    return cents


assert_type(refund("a"), int)
assert_type(refund(account="a", cents=2), int)
refund(1)  # type: ignore[arg-type]  # the decorated function keeps its type


@step(rate=Rate(1, per=timedelta(minutes=1), key=by_name))
def export(name: str) -> str:
    return name


assert_type(export("a"), str)


# A key function whose parameters are not the step function's is an error.
@step(concurrency=Limit(5, key=by_name))  # type: ignore[arg-type]  # by_name takes a str, not two ints
def refused(user_id: int, amount: int) -> Receipt:
    return Receipt(amount=amount)


Limit("5")  # type: ignore[call-overload]  # the maximum is an int

Rate(1, per="1s")  # type: ignore[call-overload]  # the period is a timedelta or seconds


@workflow
def typed_flow_limits(ctx: Context, receipt: Receipt) -> Flow[int]:
    limited = ctx.run("refund", refund, "acct", receipt.amount).options(
        concurrency=Limit(1, key="{account}"), rate=Rate(2, per=1)
    )
    assert_type(limited, RunStep[int])
    value = yield from limited
    return value
