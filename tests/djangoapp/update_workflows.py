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


class Book(BaseModel):
    total: int = 0
    per_run: int = 1
    runs_left: int = 2
    nap_seconds: int = 0


@workflow(name="updates-chained")
def chained(ctx: Context, book: Book) -> Flow[int]:
    """Answer ``per_run`` deposits per run with the running total, then continue as new.

    The first run may nap first (``nap_seconds``), so that updates sent
    meanwhile are buffered; the runs after it do not.
    """
    if book.nap_seconds:
        yield from ctx.sleep("nap", book.nap_seconds)
    total = book.total
    for taken in range(book.per_run):
        req = yield from ctx.receive(deposit, name=f"deposit-{taken}")
        total += req.request.amount
        yield from ctx.reply(req, Balance(total=total, deposits=taken + 1))
    if book.runs_left > 0:
        successor = Book(total=total, per_run=book.per_run, runs_left=book.runs_left - 1)
        return (yield from ctx.continue_as_new(chained, successor))
    return total


@workflow(name="updates-continues-unanswered")
def passes_on(ctx: Context, book: Book) -> Flow[int]:
    """Receive one deposit and continue as new without answering it (once)."""
    req = yield from ctx.receive(deposit)
    if book.runs_left > 0:
        successor = Book(total=book.total + req.request.amount, runs_left=book.runs_left - 1)
        return (yield from ctx.continue_as_new(passes_on, successor))
    return book.total
