"""Updates: typed requests into a running workflow that get an answer, without Django."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hookflow_gen import (
    Context,
    Flow,
    HookflowError,
    PayloadValidationError,
    RunStatus,
    StepFailed,
    Update,
    UpdateError,
    UpdateRejected,
    UpdateRunFinished,
    UpdateTimeout,
    WorkflowDefinitionError,
    get_run,
    workflow,
)
from hookflow_gen._updates import UpdateStatus, update_key
from hookflow_gen.testing import Stepper, WorkflowEnvironment, check_resumable, replay
from tests.djangoapp.update_workflows import (
    Balance,
    Book,
    Deposit,
    Ledger,
    chained,
    deposit,
    ignores,
    ledger,
    passes_on,
)


class Ping(BaseModel):
    n: int


ping = Update("ping", Ping, int)


@workflow(name="updates-unit-sleepy")
def sleepy(ctx: Context, _: int) -> Flow[int]:
    """Sleep an hour, then answer one ping with n + 1."""
    yield from ctx.sleep("nap", timedelta(hours=1))
    req = yield from ctx.receive(ping)
    yield from ctx.reply(req, req.request.n + 1)
    return req.request.n


@workflow(name="updates-unit-deadline")
def deadline(ctx: Context, _: int) -> Flow[str]:
    """Wait a minute for a ping; say whether one came."""
    req = yield from ctx.receive(ping, timeout=timedelta(minutes=1))
    if req is None:
        return "no ping"
    yield from ctx.reply(req, 0)
    return "pinged"


@workflow(name="updates-unit-twice")
def twice(ctx: Context, _: int) -> Flow[str]:
    """Answer one ping twice: the second reply fails."""
    req = yield from ctx.receive(ping)
    yield from ctx.reply(req, 1)
    try:
        yield from ctx.reply(req, 2)
    except StepFailed as failed:
        return failed.message
    return "answered twice"


@workflow(name="updates-unit-forgets")
def forgets(ctx: Context, _: int) -> Flow[int]:
    """Build a reply and never yield it."""
    req = yield from ctx.receive(ping)
    ctx.reply(req, 1)
    return 0


def _untyped(value: object) -> Any:
    """A request as an untyped caller might send it."""
    return value


# -- by hand ---------------------------------------------------------------------------


def test_stepper_delivers_an_update_and_returns_the_typed_answer() -> None:
    """Stepper.update settles the receive, records the reply and returns the answer."""
    s = Stepper(ledger, Ledger(deposits=2))
    assert (s.step.kind, s.step.name) == ("event", "deposit-0")
    with pytest.raises(HookflowError, match="without answering"):
        s.update(deposit, Deposit(amount=5))  # the workflow runs "add" before it replies
    assert s.step.name == "add-0"
    s.send(5)
    assert s.answer(deposit, "update-1") == Balance(total=5, deposits=1)
    with pytest.raises(UpdateRejected, match="negative") as rejected:
        s.update(deposit, Deposit(amount=-3), update_id="neg")
    assert rejected.value.reason == "a deposit of -3 is negative"
    with pytest.raises(HookflowError, match="without answering"):
        s.update(deposit, Deposit(amount=7))
    s.send(12)
    assert s.finished and s.result() == 12
    assert [r.kind for r in s.history] == [
        "event", "run", "reply", "event", "reply", "event", "run", "reply",
    ]  # fmt: skip
    assert s.answer(deposit, "update-3") == Balance(total=12, deposits=2)


def test_stepper_refuses_an_update_it_does_not_wait_for_and_a_bad_request() -> None:
    """A request that does not fit is an error; so is an update the workflow does not wait on."""
    s = Stepper(sleepy, 0)
    with pytest.raises(HookflowError, match="not on ctx.receive"):
        s.update(ping, Ping(n=1))
    s.send()
    with pytest.raises(PayloadValidationError):
        s.update(ping, _untyped({"n": "x"}))
    assert s.update(ping, Ping(n=41)) == 42
    assert s.result() == 41


def test_a_second_reply_to_one_update_fails_in_the_workflow() -> None:
    """An update is answered once: replying again throws StepFailed in (Stepper and runtime)."""
    s = Stepper(twice, 0)
    assert s.update(ping, Ping(n=1)) == 1
    assert "answered already" in s.result()
    with WorkflowEnvironment() as env:
        handle = env.start(twice, 0)
        assert handle.update(ping, Ping(n=1)) == 1
        assert "answered already" in handle.result()


def test_a_reply_built_and_not_yielded_fails_the_run() -> None:
    """A forgotten `yield from` before ctx.reply is reported, not silently unanswered."""
    with WorkflowEnvironment() as env:
        handle = env.start(forgets, 0)
        with pytest.raises(UpdateRunFinished):
            handle.update(ping, Ping(n=1), timeout=5)
        assert handle.status is RunStatus.FAILED
        error = handle.state().error
        assert error is not None and "never yielded" in error.message


# -- on the runtime (WorkflowEnvironment) --------------------------------------------------


def test_update_answers_through_the_environment() -> None:
    """handle.update drives the in-process runtime and returns each typed answer."""
    with WorkflowEnvironment() as env:
        handle = ledger.start(Ledger(deposits=2))
        first = handle.update(deposit, Deposit(amount=5))
        assert first == Balance(total=5, deposits=1)
        with pytest.raises(UpdateRejected) as rejected:
            handle.update(deposit, Deposit(amount=-1))
        assert rejected.value.run_id == handle.run_id
        assert handle.update(deposit, Deposit(amount=7)) == Balance(total=12, deposits=2)
        assert handle.result() == 12
        kinds = [record.kind for record in env.journal(handle.run_id)]
        assert kinds.count("reply") == 3 and kinds.count("event") == 3


def test_an_update_sent_early_is_kept_until_the_workflow_receives_it() -> None:
    """Sent while the run sleeps (the clock held still), it is answered once the sleep ends."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = env.start(sleepy, 0)
        assert env.journal(handle.run_id)[0].kind == "sleep"
        # The caller's waits move the fake clock; the hour passes inside its timeout.
        assert handle.update(ping, Ping(n=9), timeout=2 * 3600) == 10
        assert handle.result() == 9


def test_same_update_id_is_idempotent_and_a_reused_id_is_refused() -> None:
    """A retried update with its id gets the same answer, even after the run ended."""
    with WorkflowEnvironment() as env:
        handle = env.start(ledger, Ledger(deposits=1))
        answer = handle.update(deposit, Deposit(amount=3), update_id="u-1")
        assert handle.status is RunStatus.COMPLETED
        assert handle.update(deposit, Deposit(amount=3), update_id="u-1") == answer
        with pytest.raises(UpdateError, match="give each update its own id"):
            handle.update(deposit, Deposit(amount=4), update_id="u-1")
        assert len(env.store.updates) == 1
        assert [r.kind for r in env.journal(handle.run_id)].count("reply") == 1


def test_an_invalid_request_is_refused_and_nothing_is_stored() -> None:
    """A request that does not fit raises PayloadValidationError; no update or event is kept."""
    with WorkflowEnvironment() as env:
        handle = env.start(ledger, Ledger(deposits=1))
        with pytest.raises(PayloadValidationError, match="request of update 'deposit'"):
            handle.update(deposit, Deposit.model_construct(amount=5000))
        with pytest.raises(PayloadValidationError):
            handle.update(deposit, _untyped({"amount": "many"}))
        assert env.store.updates == {} and env.store.events == {}
        assert handle.status is RunStatus.RUNNING


def test_an_update_to_a_finished_run_raises_and_stores_nothing() -> None:
    """UpdateRunFinished for a run that ended; the request is not kept."""
    with WorkflowEnvironment() as env:
        handle = env.start(ledger, Ledger(deposits=0))
        assert handle.status is RunStatus.COMPLETED
        with pytest.raises(UpdateRunFinished, match="completed"):
            handle.update(deposit, Deposit(amount=1))
        assert env.store.updates == {}


def test_a_run_that_ends_without_answering_fails_the_caller() -> None:
    """The run received the update and returned: the caller gets UpdateRunFinished."""
    with WorkflowEnvironment() as env:
        handle = env.start(ignores, Ledger(deposits=1))
        with pytest.raises(UpdateRunFinished, match="without answering"):
            handle.update(deposit, Deposit(amount=4), timeout=60)
        assert handle.result() == 4


def test_no_answer_in_time_is_update_timeout_and_the_update_stays() -> None:
    """UpdateTimeout after the caller's timeout; calling again with the id waits for it."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = env.start(sleepy, 0)
        with pytest.raises(UpdateTimeout) as timed_out:
            handle.update(ping, Ping(n=1), timeout=60)  # the run sleeps an hour first
        assert isinstance(timed_out.value, TimeoutError)
        update_id = timed_out.value.update_id
        state = env.store.get_update(handle.run_id, update_id)
        assert state is not None and state.status is UpdateStatus.PENDING
        assert handle.update(ping, Ping(n=1), update_id=update_id, timeout=3600) == 2
        assert len(env.store.updates) == 1


def test_receive_with_a_timeout_gives_none_when_no_update_comes() -> None:
    """ctx.receive(update, timeout=...) is None once the timeout passed."""
    with WorkflowEnvironment() as env:
        assert env.run(deadline, 0) == "no ping"
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = env.start(deadline, 0)
        assert handle.update(ping, Ping(n=1)) == 0
        assert handle.result() == "pinged"


def test_a_replay_never_answers_twice() -> None:
    """A cold replay of an answered run keeps the first answer; the journal replays as is."""
    with WorkflowEnvironment() as env:
        handle = env.start(ledger, Ledger(deposits=2))
        handle.update(deposit, Deposit(amount=2), update_id="a")
        state = env.store.get_update(handle.run_id, "a")
        assert state is not None and state.status is UpdateStatus.ANSWERED
        env.runtime.close()  # no warm generator: the next tick replays the journal
        env.runtime.tick(handle.run_id)
        assert env.store.get_update(handle.run_id, "a") == state
        handle.update(deposit, Deposit(amount=3), update_id="b")
        journal = env.journal(handle.run_id)
        result = replay(ledger, Ledger(deposits=2), journal, run_id=handle.run_id)
        assert result.finished and result.replayed == len(journal)


def test_aupdate_answers_in_async_code() -> None:
    """aupdate sends and polls with asyncio.sleep; same typed answer."""
    with WorkflowEnvironment() as env:
        handle = env.start(ledger, Ledger(deposits=1))

        async def main() -> Balance:
            return await handle.aupdate(deposit, Deposit(amount=8), update_id="async")

        assert asyncio.run(main()) == Balance(total=8, deposits=1)
        assert handle.result() == 8


# -- continue-as-new chains ------------------------------------------------------------


def test_an_update_to_a_continued_run_reaches_the_chains_live_end() -> None:
    """Sent to the first id, each update is answered by the run that runs now."""
    with WorkflowEnvironment() as env:
        handle = env.start(chained, Book(), run_id="chain-1")
        assert handle.update(deposit, Deposit(amount=5)) == Balance(total=5, deposits=1)
        assert handle.status is RunStatus.CONTINUED
        answer = handle.update(deposit, Deposit(amount=7), update_id="second")
        assert answer == Balance(total=12, deposits=1)
        state = env.store.get_update("chain-1-continued-1", "second")
        assert state is not None and state.status is UpdateStatus.ANSWERED
        assert env.store.get_update("chain-1", "second") is None
        assert handle.update(deposit, Deposit(amount=3)) == Balance(total=15, deposits=1)
        assert handle.latest().run_id == "chain-1-continued-2"
        assert handle.result() == 15
        # The chain has ended: a new update is refused, naming its last run...
        with pytest.raises(UpdateRunFinished, match="chain-1-continued-2") as finished:
            handle.update(deposit, Deposit(amount=1))
        assert finished.value.run_id == "chain-1-continued-2"
        # ...and an update id used in the chain still gets its answer, or refuses another.
        assert handle.update(deposit, Deposit(amount=7), update_id="second") == answer
        with pytest.raises(UpdateError, match="give each update its own id"):
            handle.update(deposit, Deposit(amount=8), update_id="second")
        assert len(env.store.updates) == 3


def test_a_handle_on_a_middle_run_reaches_the_same_live_end() -> None:
    """Any id of the chain leads to its live end, sync and async alike."""
    with WorkflowEnvironment() as env:
        first = env.start(chained, Book(), run_id="chain-2")
        first.update(deposit, Deposit(amount=1))
        first.update(deposit, Deposit(amount=2))
        middle = get_run(chained, "chain-2-continued-1")
        assert middle.status is RunStatus.CONTINUED

        async def main() -> Balance:
            return await middle.aupdate(deposit, Deposit(amount=4), update_id="async")

        assert asyncio.run(main()) == Balance(total=7, deposits=1)
        assert env.store.get_update("chain-2-continued-2", "async") is not None
        assert first.result() == 7


def test_updates_buffered_when_a_run_continues_go_on_to_the_next_run() -> None:
    """Sent before the first run received them, they are answered by the runs after it."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = env.start(chained, Book(nap_seconds=60), run_id="chain-3")
        for update_id, amount in (("a", 5), ("b", 7), ("c", 3)):
            env.runtime.send_update("chain-3", deposit, Deposit(amount=amount), update_id)
        assert env.store.events[update_key("chain-3", "deposit")]  # all three wait there
        env.advance(60)
        assert handle.result() == 15
        assert handle.update(deposit, Deposit(amount=5), update_id="a", timeout=0).total == 5
        assert handle.update(deposit, Deposit(amount=7), update_id="b", timeout=0).total == 12
        assert handle.update(deposit, Deposit(amount=3), update_id="c", timeout=0).total == 15
        statuses = {key: state.status.value for key, state in sorted(env.store.updates.items())}
        assert statuses == {
            ("chain-3", "a"): "answered",
            ("chain-3", "b"): "continued",
            ("chain-3", "c"): "continued",
            ("chain-3-continued-1", "b"): "answered",
            ("chain-3-continued-1", "c"): "continued",
            ("chain-3-continued-2", "c"): "answered",
        }
        assert not any(env.store.events.values())  # every request was received


def test_a_caller_waiting_on_a_buffered_update_follows_it_to_the_next_run() -> None:
    """The caller's poll follows its update when the run it was sent to continues."""
    with WorkflowEnvironment(auto_advance=False) as env:
        handle = env.start(chained, Book(nap_seconds=60), run_id="chain-4")
        env.runtime.send_update("chain-4", deposit, Deposit(amount=2), "first")
        # Buffered behind "first" on the run that continues once it answered it; the
        # caller's waits move the clock past the nap.
        answer = handle.update(deposit, Deposit(amount=9), timeout=120)
        assert answer == Balance(total=11, deposits=1)
        answered = [key for key, state in env.store.updates.items() if state.status.settled]
        assert [run_id for run_id, _ in answered] == ["chain-4", "chain-4-continued-1"]


def test_an_update_received_and_dropped_by_a_continuing_run_fails_its_caller() -> None:
    """Received but not answered before the run continued: UpdateRunFinished, not handed on."""
    with WorkflowEnvironment() as env:
        handle = env.start(passes_on, Book(runs_left=1), run_id="chain-5")
        with pytest.raises(UpdateRunFinished, match="continued without answering") as dropped:
            handle.update(deposit, Deposit(amount=4), timeout=60)
        assert dropped.value.run_id == "chain-5"
        state = env.store.get_update("chain-5", dropped.value.update_id)
        assert state is not None and state.status is UpdateStatus.PENDING
        assert env.store.get_update("chain-5-continued-1", dropped.value.update_id) is None
        assert handle.latest().status is RunStatus.RUNNING  # the next run waits for its own


def test_definitions_refuse_misuse() -> None:
    """Bad names, a receive of a non-update, a reply to a non-received value are errors."""
    with pytest.raises(WorkflowDefinitionError):
        Update("", Ping, int)
    with pytest.raises(WorkflowDefinitionError):
        Update("x" * 151, Ping, int)
    s = Stepper(sleepy, 0)
    ctx = s.context
    with pytest.raises(WorkflowDefinitionError, match="needs an Update"):
        ctx.receive("ping")
    with pytest.raises(WorkflowDefinitionError, match="takes the update"):
        ctx.reply(Ping(n=1), 1)


def test_update_keys_are_private_to_the_run_and_fit_the_store() -> None:
    """Each run and update has its own key, at most 255 characters."""
    assert update_key("r1", "a") != update_key("r2", "a") != update_key("r1", "b")
    assert len(update_key("r" * 255, "a" * 150)) <= 255
    assert update_key("r" * 255, "a") != update_key("r" * 255, "b")
    received = ping.received_type(id="u", name="ping", request=Ping(n=1))
    assert received.request == Ping(n=1) and type(received).__name__ == "Received[Ping, int]"


def test_the_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's update example, run as written on a WorkflowEnvironment."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Updates: a request that gets an answer", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {
        "BaseModel": BaseModel,
        "Context": Context,
        "Flow": Flow,
        "workflow": workflow,
    }
    with WorkflowEnvironment():
        exec(compile(code, "README.md", "exec"), namespace)  # the README's own code
        assert namespace["answer"].limit_cents == 750
        assert namespace["handle"].status is RunStatus.RUNNING
    assert capsys.readouterr().out == "a raise must be positive\n"


def test_check_resumable_takes_updates() -> None:
    """check_resumable resumes a run that receives updates after every record, the same way."""
    report = check_resumable(
        ledger,
        Ledger(deposits=2),
        updates=[
            (deposit, Deposit(amount=-1)),
            (deposit, Deposit(amount=1)),
            (deposit, Deposit(amount=2)),
        ],
    )
    assert report.result == 3
    assert report.restarts == len(report.journal) + 1
    with pytest.raises(PayloadValidationError):
        check_resumable(ledger, Ledger(deposits=1), updates=[(deposit, {"amount": "x"})])
