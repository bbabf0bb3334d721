"""What the example shop's steps write: payments, stock, e-mails, accounts."""

from __future__ import annotations

from django.db import models


class Payment(models.Model):
    charge_id: models.CharField[str, str] = models.CharField(max_length=64, unique=True)
    order_id: models.IntegerField[int, int] = models.IntegerField()
    amount_cents: models.IntegerField[int, int] = models.IntegerField()
    refunded: models.BooleanField[bool, bool] = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.charge_id} ({self.amount_cents} cents)"


class StockReservation(models.Model):
    order_id: models.IntegerField[int, int] = models.IntegerField()
    sku: models.CharField[str, str] = models.CharField(max_length=32)
    quantity: models.IntegerField[int, int] = models.IntegerField()
    released: models.BooleanField[bool, bool] = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"order {self.order_id}: {self.quantity} x {self.sku}"


class Account(models.Model):
    email: models.EmailField[str, str] = models.EmailField(unique=True)
    verified: models.BooleanField[bool, bool] = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.email


class EmailMessage(models.Model):
    to: models.EmailField[str, str] = models.EmailField()
    subject: models.CharField[str, str] = models.CharField(max_length=200)
    idempotency_key: models.CharField[str, str] = models.CharField(max_length=100, unique=True)

    def __str__(self) -> str:
        return f"to {self.to}: {self.subject}"
