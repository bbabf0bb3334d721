"""Workflows whose runs the browser tests show: an order with every kind of step.

Step functions spend time on the test's fake clock (``spend``), so each run's
timeline has the same, realistic shape on every machine.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from hookflow_gen import (
    Context,
    Flow,
    NonRetryableError,
    RetryPolicy,
    Update,
    current_step,
    workflow,
)
from hookflow_gen.testing import FakeClock

CLOCK: list[FakeClock] = []


def spend(milliseconds: float) -> None:
    """Move the test's fake clock on, as a step doing real work would take time."""
    CLOCK[0].advance(timedelta(milliseconds=milliseconds))


class Order(BaseModel):
    order_id: int
    amount_cents: int
    approval_timeout_hours: float = 1.0


class Approval(BaseModel):
    approved_by: str
    note: str = ""


class Charge(BaseModel):
    charge_id: str


def reserve_stock(order_id: int) -> list[str]:
    spend(42)
    return [f"sku-{order_id}-a", f"sku-{order_id}-b"]


def charge_card(order_id: int, amount_cents: int) -> Charge:
    spend(180)
    if current_step().attempt == 1:
        raise ConnectionError("payment gateway timed out")
    return Charge(charge_id=f"ch_{order_id}_{amount_cents}")


def send_email(order_id: int) -> str:
    spend(350)
    return f"mail-{order_id}"


def send_sms(order_id: int) -> str:
    spend(90)
    return f"sms-{order_id}"


def update_crm(order_id: int) -> int:
    spend(1200)
    return order_id


def book_courier(order_id: int) -> str:
    spend(640)
    if order_id < 0:
        raise NonRetryableError("the courier refused the address")
    return f"parcel-{order_id}"


RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=2))


@workflow(name="browser_order")
def order(ctx: Context, o: Order) -> Flow[str]:
    """Reserve, charge (retried once), cool off, wait for approval, notify in parallel."""
    yield from ctx.run("reserve-stock", reserve_stock, o.order_id)
    charge = yield from ctx.run("charge-card", charge_card, o.order_id, o.amount_cents).options(
        retry=RETRY
    )
    yield from ctx.sleep("cool-off", timedelta(seconds=30))
    approval = yield from ctx.wait_for_event(
        "manager-approval",
        Approval,
        key=f"approve-{o.order_id}",
        timeout=timedelta(hours=o.approval_timeout_hours),
    )
    if approval is None:
        return "not approved in time"
    yield from ctx.gather(
        ctx.run("email", send_email, o.order_id),
        ctx.run("sms", send_sms, o.order_id),
        ctx.run("crm", update_crm, o.order_id),
    )
    return f"{charge.charge_id} approved by {approval.approved_by}"


class Shipment(BaseModel):
    order_id: int


@workflow(name="browser_ship", retry=RetryPolicy(maximum_attempts=2))
def ship(ctx: Context, s: Shipment) -> Flow[str]:
    """Book a courier; a negative order id fails for good."""
    yield from ctx.run("pack", send_sms, s.order_id)
    return (yield from ctx.run("book-courier", book_courier, s.order_id))


@workflow(name="browser_fulfil")
def fulfil(ctx: Context, o: Order) -> Flow[list[str]]:
    """Ship from two warehouses as child runs, side by side."""
    yield from ctx.run("reserve-stock", reserve_stock, o.order_id)
    eu, us = yield from ctx.gather(
        ctx.invoke("ship-eu", ship, Shipment(order_id=o.order_id)),
        ctx.invoke("ship-us", ship, Shipment(order_id=o.order_id + 1)),
    )
    return [eu, us]


class Sync(BaseModel):
    account: str
    page: int = 1
    pages: int = 3
    imported: int = 0


class SyncProgress(BaseModel):
    page: int
    pages: int
    imported: int


def import_page(account: str, page: int) -> int:
    spend(120)
    return 10 * page


@workflow(name="browser_sync")
def sync(ctx: Context, s: Sync) -> Flow[int]:
    """Import one page of an account per run, then continue as new with the next page."""
    imported = s.imported + (yield from ctx.run("import-page", import_page, s.account, s.page))
    ctx.set_status(SyncProgress(page=s.page, pages=s.pages, imported=imported))
    if s.page < s.pages:
        return (
            yield from ctx.continue_as_new(
                sync, Sync(account=s.account, page=s.page + 1, pages=s.pages, imported=imported)
            )
        )
    yield from ctx.wait_for_event("confirm", Approval, key=f"sync-{s.account}")
    return imported


class Raise(BaseModel):
    amount_cents: int
    reason: str = ""


class Limit(BaseModel):
    limit_cents: int


raise_limit = Update("raise-limit", Raise, Limit)


def check_credit(limit_cents: int) -> int:
    spend(300)
    return limit_cents


def book_raise(limit_cents: int, amount_cents: int) -> int:
    spend(120)
    return limit_cents + amount_cents


@workflow(name="browser_account")
def account(ctx: Context, opening: Limit) -> Flow[int]:
    """Check credit, then take raise-limit updates, refusing ones that are not positive."""
    limit = yield from ctx.run("check-credit", check_credit, opening.limit_cents)
    received = 0
    while limit < 100_000:
        req = yield from ctx.receive(raise_limit, name=f"raise-{received}")
        received += 1
        if req.request.amount_cents <= 0:
            yield from ctx.reject(req, "a raise must be positive")
            continue
        limit = yield from ctx.run(
            f"book-raise-{received}", book_raise, limit, req.request.amount_cents
        )
        yield from ctx.reply(req, Limit(limit_cents=limit))
    return limit
