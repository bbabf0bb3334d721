"""Models and step functions shared by the unit tests."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Order(BaseModel):
    order_id: int
    amount_cents: int = 100


class Charge(BaseModel):
    charge_id: str
    at: datetime | None = None


class Approval(BaseModel):
    approved_by: str


class Receipt(BaseModel):
    order_id: int
    charge_id: str


def charge_card(order_id: int, amount_cents: int) -> Charge:
    return Charge(charge_id=f"ch_{order_id}_{amount_cents}")


def double(x: int) -> int:
    return 2 * x


async def async_double(x: int) -> int:
    return 2 * x


def refund(charge_id: str) -> str:
    return f"refunded {charge_id}"
