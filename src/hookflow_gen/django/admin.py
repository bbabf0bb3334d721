"""The admin: browse runs and their step timelines, cancel runs.

Runs are created by code, so the admin adds none and edits none; its one
write is the "cancel selected runs" action, which goes through the runtime
(children are cancelled too).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.utils.html import format_html

from .models import Run, Step

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from django.contrib.admin import FieldListFilter, ListFilter
    from django.contrib.admin.options import InlineModelAdmin
    from django.db.models import Field
    from django.db.models.expressions import Combinable
    from django.http import HttpRequest, HttpResponseBase
    from django.utils.safestring import SafeString

__all__ = ["RunAdmin", "StepInline"]

# The options' types exactly as django-stubs declares them (it names them with
# private aliases): an override of a mutable option must repeat its type.
_Names: TypeAlias = "list[str] | tuple[str, ...] | tuple[()]"
_Ordering: TypeAlias = "list[str | Combinable] | tuple[str | Combinable, ...] | tuple[()] | None"
_FieldGroups: TypeAlias = "list[str | _Names] | tuple[str | _Names, ...] | tuple[()] | None"
_FilterOn: TypeAlias = "Field[Any, Any] | str"
_FilterClass: TypeAlias = "type[FieldListFilter]"
_Filter: TypeAlias = (
    "type[ListFilter] | _FilterOn | tuple[_FilterOn, _FilterClass] | list[_FilterOn | _FilterClass]"
)
_Display: TypeAlias = "str | Callable[[Run], str | bool]"
_Inline: TypeAlias = "type[InlineModelAdmin[Any, Any]]"
_Action: TypeAlias = (
    "Callable[[admin.ModelAdmin[Run], HttpRequest, QuerySet[Run]], HttpResponseBase | None] | str"
)
_STEP_FIELDS = ("position", "kind", "name", "status", "attempts", "duration", "outcome")
_RUN_FIELDS = (
    "run_id",
    "workflow",
    "status",
    "created_at",
    "finished_at",
    "wake_at",
    "parent",
    "payload_json",
    "result_json",
    "error_details",
)

if TYPE_CHECKING:
    _RunAdminBase = admin.ModelAdmin[Run]
    _StepInlineBase = admin.TabularInline[Step, Run]
else:  # the admin classes are generic only in the type stubs
    _RunAdminBase = admin.ModelAdmin
    _StepInlineBase = admin.TabularInline


def _pretty(text: str | None) -> str:
    """JSON text re-indented for reading (as stored if it is not JSON)."""
    if text is None:
        return "-"
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


def _pre(text: str) -> SafeString:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def _error_html(error: Any) -> SafeString:
    if not isinstance(error, dict):
        return _pre("-")
    data = cast("dict[str, object]", error)
    head = f"{data.get('type', '?')}: {data.get('message', '')}"
    traceback = data.get("traceback")
    if traceback:
        return format_html("<strong>{}</strong>{}", head, _pre(str(traceback)))
    return format_html("<strong>{}</strong>", head)


class StepInline(_StepInlineBase):
    """The run's journal as a read-only timeline."""

    model = Step
    extra = 0
    can_delete = False
    show_change_link = False
    ordering: ClassVar[_Ordering] = ("position",)
    fields: ClassVar[_FieldGroups] = _STEP_FIELDS
    readonly_fields: ClassVar[_Names] = _STEP_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False

    @admin.display(description="duration")
    def duration(self, step: Step) -> str:
        """completed_at - started_at, once settled."""
        if step.started_at is None or step.completed_at is None:
            return "-"
        return str(step.completed_at - step.started_at)

    @admin.display(description="result / error")
    def outcome(self, step: Step) -> SafeString:
        """The result as pretty JSON, or the error with its traceback."""
        if step.error is not None and step.status != "completed":
            return _error_html(step.error)
        if step.status == "pending":
            return _pre(f"waiting until {step.wake_at}" if step.wake_at else "pending")
        return _pre(_pretty(step.result))


@admin.register(Run)
class RunAdmin(_RunAdminBase):
    """Runs: filter by workflow and status, search by id, cancel."""

    list_display: list[_Display] | tuple[_Display, ...] | tuple[()] = (
        "run_id",
        "workflow",
        "status",
        "created_at",
        "finished_at",
        "step_count",
    )
    list_filter: ClassVar[list[_Filter] | tuple[_Filter, ...] | tuple[()]] = (
        "workflow",
        "status",
    )
    search_fields: ClassVar[_Names] = ("run_id",)
    date_hierarchy: ClassVar[str | None] = "created_at"
    ordering: ClassVar[_Ordering] = ("-created_at",)
    actions: Sequence[_Action] | None = ("cancel_runs",)
    inlines: ClassVar[list[_Inline] | tuple[_Inline, ...] | tuple[()]] = (StepInline,)
    fields: ClassVar[_FieldGroups] = _RUN_FIELDS
    readonly_fields: ClassVar[_Names] = _RUN_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return super().get_queryset(request).annotate(_step_count=Count("steps"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        # A run's page is read-only; change permission on the list enables the action.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="steps", ordering="_step_count")
    def step_count(self, run: Run) -> int:
        """How many steps the run has reached."""
        count: int = getattr(run, "_step_count", 0)
        return count

    @admin.display(description="parent run")
    def parent(self, run: Run) -> str:
        """The parent run and step position of a child run."""
        if run.parent_run_id is None:
            return "-"
        return f"{run.parent_run_id} (step #{run.parent_position})"

    @admin.display(description="payload")
    def payload_json(self, run: Run) -> SafeString:
        """The payload as pretty JSON."""
        return _pre(_pretty(run.payload))

    @admin.display(description="result")
    def result_json(self, run: Run) -> SafeString:
        """The result as pretty JSON."""
        return _pre(_pretty(run.result))

    @admin.display(description="error")
    def error_details(self, run: Run) -> SafeString:
        """The error that ended the run, with its traceback."""
        return _error_html(run.error)

    @admin.action(description="Cancel selected runs", permissions=["change"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        """Cancel every selected run that is still running (and its children)."""
        from .._client import current_runtime

        runtime = current_runtime()
        running = queryset.filter(status=Run.Status.RUNNING).values_list("run_id", flat=True)
        cancelled = 0
        for run_id in running:
            runtime.cancel(run_id)
            cancelled += 1
        self.message_user(request, f"Cancelled {cancelled} run(s).", messages.SUCCESS)
