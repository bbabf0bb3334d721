"""The public surface: what is exported, and that it stays sorted and complete."""

from __future__ import annotations

import hookflow_gen
import hookflow_gen.exceptions
import hookflow_gen.testing

EXPECTED = [
    "CallResponse",
    "CallStep",
    "Cancelled",
    "Context",
    "ContinueAsNewStep",
    "ErrorInfo",
    "EventStep",
    "Flow",
    "GatherStep",
    "HookflowError",
    "InvalidIdError",
    "InvokeStep",
    "Limit",
    "NonDeterminismError",
    "NonRetryableError",
    "PayloadValidationError",
    "RaceStep",
    "Rate",
    "Received",
    "ReplyStep",
    "RetryAfter",
    "RetryPolicy",
    "RunCancelled",
    "RunHandle",
    "RunInfo",
    "RunState",
    "RunStatus",
    "RunStep",
    "Schedule",
    "SleepStep",
    "Step",
    "StepCancelled",
    "StepFailed",
    "StepInfo",
    "StepRecord",
    "StepStatus",
    "Update",
    "UpdateError",
    "UpdateRejected",
    "UpdateRunFinished",
    "UpdateTimeout",
    "Winner",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowFailed",
    "anotify",
    "cancel",
    "current_step",
    "get_run",
    "get_workflow",
    "notify",
    "step",
    "workflow",
]


def test_all_is_pinned() -> None:
    """The package exports exactly the pinned names, sorted."""
    assert hookflow_gen.__all__ == EXPECTED
    assert sorted(hookflow_gen.__all__) == hookflow_gen.__all__


def test_every_exported_name_exists() -> None:
    """Every name in ``__all__`` of each public module resolves."""
    for module in (hookflow_gen, hookflow_gen.exceptions, hookflow_gen.testing):
        assert sorted(module.__all__) == module.__all__
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_every_error_descends_from_the_root() -> None:
    """Errors share the HookflowError root, but for the step-steering ones and Cancelled."""
    ex = hookflow_gen.exceptions
    for name in ex.__all__:
        cls = getattr(ex, name)
        if name in ("NonRetryableError", "RetryAfter"):
            assert not issubclass(cls, ex.HookflowError)
        elif name == "Cancelled":  # thrown into workflows; no `except Exception` may swallow it
            assert not issubclass(cls, Exception)
        else:
            assert issubclass(cls, ex.HookflowError), name


def test_testing_exports() -> None:
    """The testing kit exports its helpers."""
    assert hookflow_gen.testing.__all__ == [
        "Effect",
        "FakeClock",
        "ReplayResult",
        "ResumabilityError",
        "ResumabilityWarning",
        "ResumeProblem",
        "ResumeReport",
        "Stepper",
        "WorkflowEnvironment",
        "answer",
        "check_resumable",
        "context",
        "finish",
        "replay",
        "step_failed",
    ]
