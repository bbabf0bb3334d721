"""The async entry points' typing contract: checked by mypy --strict and pyright strict, never run.

``await wf.astart(payload)`` is typed from the workflow as ``start`` is,
``await handle.aresult()`` gives the workflow's result type, and
``await anotify(...)`` the number of runs that received the event. The
negative cases carry ``type: ignore[code]`` comments that both checkers must
find necessary.
"""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

import hookflow_gen
from hookflow_gen import Context, Flow, RunHandle, get_run, workflow


class Order(BaseModel):
    order_id: int


class Receipt(BaseModel):
    order_id: int
    charge_id: str


@workflow
def checkout(ctx: Context, order: Order) -> Flow[Receipt]:
    charge = yield from ctx.run("charge", str, order.order_id)
    return Receipt(order_id=order.order_id, charge_id=charge)


async def async_view() -> None:
    handle = await checkout.astart(Order(order_id=7))
    assert_type(handle, RunHandle[Receipt])
    assert_type(await handle.aresult(), Receipt)
    assert_type(await handle.aresult(wait=5.0, poll=0.1), Receipt)
    again = await checkout.astart(Order(order_id=7), run_id="order-7")
    assert_type(again.run_id, str)
    assert_type(await hookflow_gen.anotify("order-7", {"approved_by": "ann"}), int)
    assert_type(await get_run("order-7").aresult(), Any)


async def mistakes() -> None:
    await checkout.astart(Receipt(order_id=1, charge_id="x"))  # type: ignore[arg-type]
    handle = await checkout.astart(Order(order_id=7))
    wrong: str = await handle.aresult()  # type: ignore[assignment]
    await handle.aresult(wait="5")  # type: ignore[arg-type]
    await hookflow_gen.anotify(7, {})  # type: ignore[arg-type]
    not_awaited: RunHandle[Receipt] = checkout.astart(Order(order_id=7))  # type: ignore[assignment]
