"""Property: a run interrupted at any position and resumed elsewhere ends the same way."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from hookflow_gen import Context, Flow, RetryPolicy, RunStatus, StepFailed, StepRecord, workflow
from hookflow_gen._context import RunInfo
from hookflow_gen._engine import Replay, Waiting
from hookflow_gen._runtime import Runtime
from hookflow_gen._scheduler import DatabaseScheduler
from hookflow_gen._store import MemoryStore, RunState
from hookflow_gen.testing import EPOCH, FakeClock


class Op(BaseModel):
    kind: Literal["run", "sleep", "gather", "fail", "uuid", "now"]
    value: int


class Plan(BaseModel):
    ops: list[Op]


def add(a: int, b: int) -> int:
    return a + b


def boom(value: int) -> int:
    raise ValueError(f"boom {value}")


@workflow(retry=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=3)))
def planned(ctx: Context, plan: Plan) -> Flow[list[int]]:
    out: list[int] = []
    for i, op in enumerate(plan.ops):
        if op.kind == "run":
            out.append((yield from ctx.run(f"r{i}", add, op.value, len(out))))
        elif op.kind == "sleep":
            yield from ctx.sleep(f"s{i}", op.value)
        elif op.kind == "gather":
            values = yield from ctx.gather(
                *[ctx.run(f"g{i}-{j}", add, j, op.value) for j in range(1 + op.value % 3)]
            )
            out.extend(values)
        elif op.kind == "fail":
            try:
                yield from ctx.run(f"f{i}", boom, op.value)
            except StepFailed as exc:
                out.append(-exc.attempts)
        elif op.kind == "uuid":
            out.append(ctx.uuid4().int % 1000)
        else:
            out.append(int((ctx.now() - EPOCH).total_seconds()))
    return out


def drive(runtime: Runtime, clock: FakeClock, store: MemoryStore, run_id: str) -> RunState:
    """Tick until the run ends, jumping the clock to each wake-up."""
    for _ in range(1000):
        runtime.tick(run_id)
        run = store.runs[run_id]
        if run.status.finished:
            return run
        assert run.wake_at is not None, "a running run must always have a wake-up"
        if run.wake_at > clock.now():
            clock.advance(run.wake_at - clock.now())
    raise AssertionError("the run did not finish")


def fresh(warm: int = 0) -> tuple[Runtime, FakeClock, MemoryStore]:
    clock = FakeClock()
    store = MemoryStore()
    return Runtime(store, DatabaseScheduler(), clock=clock, warm_runs=warm), clock, store


def settled_view(records: list[StepRecord]) -> list[tuple[object, ...]]:
    return [
        (r.position, r.kind, r.name, r.status, r.result, r.attempts, r.completed_at)
        for r in records
    ]


ops = st.builds(
    Op,
    kind=st.sampled_from(["run", "sleep", "gather", "fail", "uuid", "now"]),
    value=st.integers(min_value=0, max_value=50),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=8))
def test_interrupted_runs_end_like_uninterrupted_ones(plan_ops: list[Op]) -> None:
    """Resuming from any journal prefix yields the same result and the same journal."""
    plan = Plan(ops=plan_ops)
    runtime, clock, store = fresh(warm=8)
    run, _ = runtime.start_run(planned, plan, run_id="p")
    final = drive(runtime, clock, store, run.run_id)
    assert final.status is RunStatus.COMPLETED
    journal = store.steps("p")
    assert all(r.settled for r in journal)

    for k in range(len(journal) + 1):
        prefix = journal[:k]
        # The engine alone: the prefix replays and stops at position k exactly.
        execution = Replay(planned, run.payload, runtime_info(run), prefix)
        decision = execution.advance()
        if k < len(journal):
            assert isinstance(decision, Waiting)
            assert any(
                (p.position, p.step.kind, p.step.name)
                == (journal[k].position, journal[k].kind, journal[k].name)
                for p in decision.pending
            )
        # The runtime: a new process picks the run up from the prefix.
        runtime2, clock2, store2 = fresh()
        resume_at = max((r.completed_at for r in prefix if r.completed_at), default=EPOCH)
        clock2.advance(resume_at - EPOCH)
        store2.create_run(dataclasses.replace(run, wake_at=clock2.now()))
        for record in prefix:
            store2.save_step("p", record)
        resumed = drive(runtime2, clock2, store2, "p")
        assert resumed.result == final.result
        assert settled_view(store2.steps("p")) == settled_view(journal)


def runtime_info(run: RunState) -> RunInfo:
    return RunInfo(
        run_id=run.run_id, workflow_name=run.workflow, started_at=run.created_at or EPOCH
    )
