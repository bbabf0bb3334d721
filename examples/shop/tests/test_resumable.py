"""The shop's workflows survive a crash after any journal record.

``check_resumable`` runs each workflow once, then resumes it from every
prefix of its journal on a fresh runtime and fails if a resumed run ends
differently. The order and onboarding checks run the shop's real step
functions on the test database (each is called once: a resumed run that
repeats a call is given the first answer); the report stubs its slow
per-region queries.

Run with the rest of the suite: ``uv run pytest examples``.
"""

from __future__ import annotations

from datetime import date

import pytest

from hookflow_gen import RunStatus
from hookflow_gen.testing import check_resumable
from shop.models import Account, EmailMessage, Payment, StockReservation
from shop.steps import RegionSales
from shop.workflows import (
    EmailVerified,
    OrderRequest,
    ReportRequest,
    Signup,
    onboarding,
    order_saga,
    sales_report,
    verification_key,
)

pytestmark = pytest.mark.django_db


def order(address: str) -> OrderRequest:
    return OrderRequest(
        order_id=41,
        email="ann@example.com",
        sku="mug",
        quantity=2,
        amount_cents=1800,
        address=address,
    )


def test_an_order_that_ships_resumes_anywhere() -> None:
    """Charge, reserve, ship, confirm: the same outcome from every journal position."""
    report = check_resumable(order_saga, order("1 Main St"))
    outcome = report.result
    assert (outcome.status, outcome.tracking) == ("shipped", "PC00000041")
    assert [r.name for r in report.journal] == ["charge", "reserve", "ship", "confirm"]
    assert Payment.objects.get().charge_id == outcome.charge_id  # the real steps ran, once
    assert EmailMessage.objects.count() == 1


def test_an_order_that_cannot_ship_compensates_from_anywhere() -> None:
    """The saga's refund and stock release resume like the rest."""
    report = check_resumable(order_saga, order("Nowhere Lane"))
    assert report.result.status == "cancelled"
    names = [r.name for r in report.journal]
    assert names == ["charge", "reserve", "ship", "release-stock", "refund", "sorry"]
    assert Payment.objects.get().refunded
    assert StockReservation.objects.get().released


def test_onboarding_resumes_with_and_without_the_verification_event() -> None:
    """The sleep, the event and its timeout path all resume identically."""
    signup = Signup(email="bo@example.com", nudge_after_seconds=60, verify_within_seconds=600)
    verified = check_resumable(
        onboarding,
        signup,
        events={verification_key(signup.email): EmailVerified(email=signup.email)},
    )
    assert verified.result.verified and Account.objects.get().verified

    late = Signup(email="cy@example.com", nudge_after_seconds=60, verify_within_seconds=600)
    timed_out = check_resumable(onboarding, late)
    assert timed_out.status is RunStatus.COMPLETED and not timed_out.result.verified
    assert timed_out.journal[-1].name == "reminder"


def fake_tally(region: str, day: date) -> RegionSales:
    return RegionSales(region=region, orders=len(region), revenue_cents=100 * len(region))


def test_the_sales_report_and_its_child_resume_anywhere() -> None:
    """The fan-out, the fan-in and the child workflow that renders the table."""
    regions = ["north", "south", "east"]
    report = check_resumable(
        sales_report,
        ReportRequest(day=date(2026, 1, 2), regions=regions),
        stubs={f"tally-{region}": fake_tally for region in regions},
    )
    assert report.result.total_orders == 5 + 5 + 4
    assert report.warnings == ()
    assert {e.run_id for e in report.effects} == {"check", "check-3"}  # the child renders
