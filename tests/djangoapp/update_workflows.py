"""Workflows that receive updates, shared by the unit, Django and worker-process tests."""

from __future__ import annotations

from pydantic import BaseModel, Field

from hookflow_gen import Context, Flow, Update, workflow


class Deposit(BaseModel):
    amount: int = Field(ge=-1000, le=1000)


class Balance(BaseModel):
    total: int
    deposits: int


class Ledger(BaseModel):
    deposits: int


deposit = Update("deposit", Deposit, Balance)


def add(total: int, amount: int) -> int:
    return total + amount


@workflow(name="updates-ledger")
def ledger(ctx: Context, book: Ledger) -> Flow[int]:
    """Take ``book.deposits`` deposits, one update each; refuse negative ones."""
    total = 0
    taken = 0
    received = 0
    while taken < book.deposits:
        req = yield from ctx.receive(deposit, name=f"deposit-{received}")
        received += 1
        if req.request.amount < 0:
            yield from ctx.reject(req, f"a deposit of {req.request.amount} is negative")
            continue
        total = yield from ctx.run(f"add-{taken}", add, total, req.request.amount)
        taken += 1
        yield from ctx.reply(req, Balance(total=total, deposits=taken))
    return total


@workflow(name="updates-ignores")
def ignores(ctx: Context, book: Ledger) -> Flow[int]:
    """Receive one deposit and end without answering it."""
    req = yield from ctx.receive(deposit)
    return req.request.amount
