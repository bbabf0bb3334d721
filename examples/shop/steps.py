"""The example shop's step functions: plain, typed functions, most touching the database.

Steps that only write the database are ``atomic``: the write and the step's
checkpoint commit together, so they happen exactly once. Steps that call
the outside world use ``current_step().idempotency_key`` so a retry or a
redelivery never charges or e-mails twice.
"""

from __future__ import annotations

import hashlib
import time
from datetime import date, timedelta

from django.db import transaction
from pydantic import BaseModel

from hookflow_gen import NonRetryableError, RetryPolicy, current_step, step

from .models import Account, EmailMessage, Payment, StockReservation


class Charge(BaseModel):
    charge_id: str
    amount_cents: int


class Reservation(BaseModel):
    reservation_id: int
    sku: str
    quantity: int


class Shipment(BaseModel):
    carrier: str
    tracking: str


class RegionSales(BaseModel):
    region: str
    orders: int
    revenue_cents: int


@step(retry=RetryPolicy(maximum_attempts=4, initial_interval=timedelta(seconds=0.2)))
def charge_card(order_id: int, amount_cents: int) -> Charge:
    """Charge the customer; the idempotency key makes a repeated attempt harmless."""
    key = current_step().idempotency_key
    payment, _ = Payment.objects.get_or_create(
        charge_id=f"ch_{hashlib.sha256(key.encode()).hexdigest()[:12]}",
        defaults={"order_id": order_id, "amount_cents": amount_cents},
    )
    return Charge(charge_id=payment.charge_id, amount_cents=payment.amount_cents)


@step(atomic=True)
def reserve_stock(order_id: int, sku: str, quantity: int) -> Reservation:
    """Hold stock for the order; atomic, so it happens exactly once."""
    row = StockReservation.objects.create(order_id=order_id, sku=sku, quantity=quantity)
    return Reservation(reservation_id=row.pk, sku=sku, quantity=quantity)


def book_shipment(order_id: int, address: str) -> Shipment:
    """Book a carrier; some addresses cannot be served, which no retry will fix."""
    time.sleep(0.2)  # a call to the carrier's API
    if "nowhere" in address.lower():
        raise NonRetryableError(f"no carrier delivers to {address!r}")
    return Shipment(carrier="parcel-co", tracking=f"PC{order_id:08d}")


@step(atomic=True)
def release_stock(reservation_id: int) -> int:
    """Give reserved stock back (compensation)."""
    return StockReservation.objects.filter(pk=reservation_id, released=False).update(released=True)


@step(atomic=True)
def refund(charge_id: str) -> str:
    """Refund a charge (compensation)."""
    Payment.objects.filter(charge_id=charge_id).update(refunded=True)
    return f"refunded {charge_id}"


def send_email(to: str, subject: str) -> bool:
    """Send an e-mail at most once per step, whatever the retries."""
    key = current_step().idempotency_key
    with transaction.atomic():
        _, created = EmailMessage.objects.get_or_create(
            idempotency_key=key, defaults={"to": to, "subject": subject}
        )
    return created


@step(atomic=True)
def create_account(email: str) -> int:
    """Create the account row."""
    account, _ = Account.objects.get_or_create(email=email)
    return account.pk


@step(atomic=True)
def mark_verified(account_id: int) -> bool:
    """Record that the e-mail address was verified."""
    return Account.objects.filter(pk=account_id).update(verified=True) == 1


def tally_region(region: str, day: date) -> RegionSales:
    """Add up a region's sales for a day (a slow query, in the real world)."""
    time.sleep(0.4)
    digest = hashlib.sha256(f"{region}:{day.isoformat()}".encode()).digest()
    orders = 10 + digest[0] % 90
    return RegionSales(region=region, orders=orders, revenue_cents=orders * (1000 + digest[1] * 10))


def render_table(rows: list[RegionSales]) -> str:
    """Render the report as a small text table."""
    lines = [f"{'region':<10}{'orders':>8}{'revenue':>12}"]
    lines += [f"{r.region:<10}{r.orders:>8}{r.revenue_cents / 100:>12.2f}" for r in rows]
    return "\n".join(lines)
