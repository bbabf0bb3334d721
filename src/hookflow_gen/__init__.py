"""hookflow_gen: typed, generator-based durable workflows for Django.

A workflow is a generator function that yields typed step requests::

    @workflow
    def checkout(ctx: Context, order: Order) -> Flow[Receipt]:
        charge = yield from ctx.run("charge", charge_card, order.order_id)
        yield from ctx.sleep("cool-off", timedelta(hours=1))
        return Receipt(order_id=order.order_id, charge_id=charge.charge_id)
"""

from ._client import RunHandle as RunHandle
from ._client import anotify as anotify
from ._client import cancel as cancel
from ._client import get_run as get_run
from ._client import notify as notify
from ._context import Context as Context
from ._context import RunInfo as RunInfo
from ._context import step as step
from ._flow import Limit as Limit
from ._flow import Rate as Rate
from ._journal import ErrorInfo as ErrorInfo
from ._journal import StepRecord as StepRecord
from ._journal import StepStatus as StepStatus
from ._runtime import StepInfo as StepInfo
from ._runtime import current_step as current_step
from ._schedule import Schedule as Schedule
from ._steps import CallResponse as CallResponse
from ._steps import CallStep as CallStep
from ._steps import ContinueAsNewStep as ContinueAsNewStep
from ._steps import EventStep as EventStep
from ._steps import Flow as Flow
from ._steps import GatherStep as GatherStep
from ._steps import InvokeStep as InvokeStep
from ._steps import RaceStep as RaceStep
from ._steps import ReplyStep as ReplyStep
from ._steps import RetryPolicy as RetryPolicy
from ._steps import RunStep as RunStep
from ._steps import SleepStep as SleepStep
from ._steps import Step as Step
from ._steps import Winner as Winner
from ._store import RunState as RunState
from ._store import RunStatus as RunStatus
from ._updates import Received as Received
from ._updates import Update as Update
from ._workflow import Workflow as Workflow
from ._workflow import get_workflow as get_workflow
from ._workflow import workflow as workflow
from .exceptions import Cancelled as Cancelled
from .exceptions import HookflowError as HookflowError
from .exceptions import InvalidIdError as InvalidIdError
from .exceptions import NonDeterminismError as NonDeterminismError
from .exceptions import NonRetryableError as NonRetryableError
from .exceptions import PayloadValidationError as PayloadValidationError
from .exceptions import RetryAfter as RetryAfter
from .exceptions import RunCancelled as RunCancelled
from .exceptions import StepCancelled as StepCancelled
from .exceptions import StepFailed as StepFailed
from .exceptions import UpdateError as UpdateError
from .exceptions import UpdateRejected as UpdateRejected
from .exceptions import UpdateRunFinished as UpdateRunFinished
from .exceptions import UpdateTimeout as UpdateTimeout
from .exceptions import WorkflowDefinitionError as WorkflowDefinitionError
from .exceptions import WorkflowFailed as WorkflowFailed

__all__ = [
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
