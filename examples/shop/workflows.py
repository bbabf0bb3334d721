"""The example shop's workflows, found by autodiscovery (``<app>/workflows.py``).

- ``order_saga``: charge, reserve, ship; if shipping fails for good, release
  the stock and refund, in parallel (a saga with compensation).
- ``onboarding``: welcome e-mail, a sleep, then wait for the user to verify
  their address, with a timeout.
- ``sales_report``: tally regions in parallel (fan-out), add up (fan-in),
  and have a child workflow render the result.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel

from hookflow_gen import Context, Flow, StepFailed, workflow

from .steps import (
    RegionSales,
    book_shipment,
    charge_card,
    create_account,
    mark_verified,
    refund,
    release_stock,
    render_table,
    reserve_stock,
    send_email,
    tally_region,
)


class OrderRequest(BaseModel):
    order_id: int
    email: str
    sku: str
    quantity: int
    amount_cents: int
    address: str


class OrderOutcome(BaseModel):
    order_id: int
    status: Literal["shipped", "cancelled"]
    charge_id: str
    tracking: str | None = None
    reason: str | None = None


@workflow
def order_saga(ctx: Context, order: OrderRequest) -> Flow[OrderOutcome]:
    charge = yield from ctx.run("charge", charge_card, order.order_id, order.amount_cents)
    reservation = yield from ctx.run(
        "reserve", reserve_stock, order.order_id, order.sku, order.quantity
    )
    try:
        shipment = yield from ctx.run("ship", book_shipment, order.order_id, order.address)
    except StepFailed as failure:
        # Compensate what succeeded, both at once; each is atomic and exactly once.
        yield from ctx.gather(
            ctx.run("release-stock", release_stock, reservation.reservation_id),
            ctx.run("refund", refund, charge.charge_id),
        )
        yield from ctx.run(
            "sorry", send_email, order.email, f"Order {order.order_id} cancelled: refunded"
        )
        return OrderOutcome(
            order_id=order.order_id,
            status="cancelled",
            charge_id=charge.charge_id,
            reason=failure.message,
        )
    yield from ctx.run(
        "confirm", send_email, order.email, f"Order {order.order_id} shipped: {shipment.tracking}"
    )
    return OrderOutcome(
        order_id=order.order_id,
        status="shipped",
        charge_id=charge.charge_id,
        tracking=shipment.tracking,
    )


class Signup(BaseModel):
    email: str
    nudge_after_seconds: float = 3600
    verify_within_seconds: float = 7 * 24 * 3600


class EmailVerified(BaseModel):
    email: str


class OnboardingResult(BaseModel):
    email: str
    verified: bool


def verification_key(email: str) -> str:
    """The event key ``notify`` uses when the user clicks the verification link."""
    return f"verified:{email}"


@workflow
def onboarding(ctx: Context, signup: Signup) -> Flow[OnboardingResult]:
    account_id = yield from ctx.run("create-account", create_account, signup.email)
    yield from ctx.run("welcome", send_email, signup.email, "Welcome! Please verify your address")
    yield from ctx.sleep("nudge-delay", signup.nudge_after_seconds)
    yield from ctx.run("nudge", send_email, signup.email, "Three things to try first")
    verified = yield from ctx.wait_for_event(
        "verification",
        EmailVerified,
        key=verification_key(signup.email),
        timeout=signup.verify_within_seconds,
    )
    if verified is None:
        yield from ctx.run("reminder", send_email, signup.email, "Your address is not verified")
        return OnboardingResult(email=signup.email, verified=False)
    yield from ctx.run("mark-verified", mark_verified, account_id)
    return OnboardingResult(email=signup.email, verified=True)


class ReportRequest(BaseModel):
    day: date
    regions: list[str]


class SalesReport(BaseModel):
    day: date
    total_orders: int
    total_revenue_cents: int
    table: str


class RenderRequest(BaseModel):
    rows: list[RegionSales]


@workflow
def render_report(ctx: Context, request: RenderRequest) -> Flow[str]:
    return (yield from ctx.run("render", render_table, request.rows))


@workflow
def sales_report(ctx: Context, request: ReportRequest) -> Flow[SalesReport]:
    rows = yield from ctx.gather(
        *[
            ctx.run(f"tally-{region}", tally_region, region, request.day)
            for region in request.regions
        ]
    )
    table = yield from ctx.invoke("render", render_report, RenderRequest(rows=list(rows)))
    return SalesReport(
        day=request.day,
        total_orders=sum(r.orders for r in rows),
        total_revenue_cents=sum(r.revenue_cents for r in rows),
        table=table,
    )
