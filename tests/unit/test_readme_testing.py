"""The README's "Testing your workflows" examples, run as tests so they cannot rot.

The workflows are the README's ``checkout`` and ``order``, with step
functions that do something. ``test_readme_examples_are_these_tests`` fails
when a test function shown in that README section no longer matches the one
here.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hookflow_gen import (
    Context,
    EventStep,
    Flow,
    RunStep,
    SleepStep,
    StepFailed,
    StepRecord,
    workflow,
)
from hookflow_gen.testing import (
    Stepper,
    WorkflowEnvironment,
    answer,
    check_resumable,
    context,
    finish,
    replay,
    step_failed,
)

README = Path(__file__).resolve().parents[2] / "README.md"


class Order(BaseModel):
    order_id: int
    amount_cents: int


class Charge(BaseModel):
    charge_id: str


class Approval(BaseModel):
    approved_by: str


class Receipt(BaseModel):
    order_id: int
    charge_id: str
    approved_by: str


class Shipment(BaseModel):
    tracking: str


def charge_card(order_id: int, amount_cents: int) -> Charge:
    return Charge(charge_id=f"ch_{order_id}_{amount_cents}")


def book_shipment(order_id: int) -> Shipment:
    return Shipment(tracking=f"PC{order_id}")


def refund(charge_id: str) -> str:
    return f"refunded {charge_id}"


@workflow(name="readme-checkout")
def checkout(ctx: Context, order: Order) -> Flow[Receipt]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    yield from ctx.sleep("cool-off", timedelta(hours=1))
    approval = yield from ctx.wait_for_event("approval", Approval, key=f"order-{order.order_id}")
    return Receipt(
        order_id=order.order_id, charge_id=charge.charge_id, approved_by=approval.approved_by
    )


@workflow(name="readme-order")
def order(ctx: Context, o: Order) -> Flow[str]:
    charge = yield from ctx.run("charge", charge_card, o.order_id, o.amount_cents)
    try:
        yield from ctx.run("ship", book_shipment, o.order_id)
    except StepFailed as failed:
        yield from ctx.run("refund", refund, charge.charge_id)
        return f"refunded: {failed.message}"
    return "shipped"


@pytest.fixture
def stored_journal() -> list[StepRecord]:
    """A finished checkout's journal, as the database would hold it."""
    with WorkflowEnvironment() as env:
        run = checkout.start(Order(order_id=7, amount_cents=1200))
        env.notify("order-7", Approval(approved_by="ann"))
        return env.journal(run.run_id)


# -- the README's examples, verbatim ----------------------------------------------


def test_checkout_by_hand() -> None:
    """Stepper walks checkout step by step, through the real replay engine."""
    s = Stepper(checkout, Order(order_id=7, amount_cents=1200))
    assert s.step.name == "charge"
    s.send(Charge(charge_id="ch_1"))  # validated like a stored result
    s.send()  # the sleep
    s.send(Approval(approved_by="ann"))
    assert s.result() == Receipt(order_id=7, charge_id="ch_1", approved_by="ann")


def test_checkout_end_to_end() -> None:
    """WorkflowEnvironment runs checkout on the real runtime with a fake clock."""
    with WorkflowEnvironment(stubs={"charge": Charge(charge_id="stub")}) as env:
        run = checkout.start(Order(order_id=7, amount_cents=1200))  # sleeps pass at once
        env.notify("order-7", Approval(approved_by="ann"))
        assert run.result().charge_id == "stub"


def test_new_code_still_replays_old_runs(stored_journal: list[StepRecord]) -> None:
    """A stored journal replays against the current code."""
    result = replay(checkout, Order(order_id=7, amount_cents=1200), stored_journal)
    assert result.finished  # NonDeterminismError if the code no longer follows it


def test_checkout_raw_generator() -> None:
    """next() gives the first step, send() answers one and gives the next, finish() the result."""
    gen = checkout(context(run_id="r1"), Order(order_id=7, amount_cents=1200))
    step = next(gen)  # a Step[Any]: narrow it with isinstance
    assert isinstance(step, RunStep) and step.name == "charge" and step.args == (7, 1200)
    step = gen.send(answer(charge_card)(Charge(charge_id="ch_1")))  # must be a Charge
    assert isinstance(step, SleepStep) and step.duration == timedelta(hours=1)
    step = gen.send(None)
    assert isinstance(step, EventStep) and step.key == "order-7"
    receipt = finish(gen, answer(Approval)(Approval(approved_by="ann")))  # a Receipt
    assert receipt == Receipt(order_id=7, charge_id="ch_1", approved_by="ann")


def test_order_refunds_when_shipping_fails() -> None:
    """throw() fails the current step: the workflow's except StepFailed compensates."""
    gen = order(context(), Order(order_id=7, amount_cents=1200))
    next(gen)  # the charge
    ship = gen.send(answer(charge_card)(Charge(charge_id="ch_1")))
    step = gen.throw(step_failed(ship, ValueError("no carrier")))
    assert isinstance(step, RunStep) and step.name == "refund" and step.args == ("ch_1",)
    assert finish(gen, answer(refund)("refunded ch_1")) == "refunded: no carrier"


def test_checkout_survives_a_crash_anywhere() -> None:
    """Resumed after any journal record on a fresh runtime, checkout ends the same way."""
    report = check_resumable(
        checkout,
        Order(order_id=7, amount_cents=1200),
        stubs={"charge": Charge(charge_id="ch_1")},
        events={"order-7": Approval(approved_by="ann")},
    )
    assert report.result.charge_id == "ch_1"
    assert report.restarts == 4  # 3 journal records: resumed after 0, 1, 2 and 3 of them


# -- keeping the README and this file in step ---------------------------------------


def _readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_examples_are_these_tests() -> None:
    """Every test function in the README's testing section is the same code as here."""
    section = _readme_section("Testing your workflows")
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    module = sys.modules[__name__]
    shown: list[str] = []
    for block in blocks:
        tree = ast.parse(block)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                here: Callable[..., Any] = getattr(module, node.name)
                mine = ast.parse(inspect.getsource(here)).body[0]
                assert ast.dump(node) == ast.dump(mine), f"README's {node.name} differs"
                shown.append(node.name)
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    imported = __import__(node.module or "", fromlist=[alias.name])
                    assert hasattr(imported, alias.name), f"{node.module}.{alias.name}"
    assert len(shown) >= 6, shown
