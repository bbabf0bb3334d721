"""The admin: runs at a glance, each run's steps as a timeline, and its buttons.

Runs are created by code, so the admin adds none and edits none. Its writes
go through the runtime, as code would: cancel (children too), resume a
failed run (where the runtime offers ``resume``), send the event a step
waits for (validated against that step's model), send the update a
``ctx.receive`` step waits for (validated against the update's request
type, as ``handle.update`` does; its answer or rejection is shown), and the
"cancel selected runs" action. A refused action is an admin message, never
an error page.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from .._steps import EventStep
from .._updates import UpdateStatus, is_update_key, update_name_in
from ..exceptions import HookflowError
from ._timeline import humanize, layout
from .models import Run, Step, Update

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from django.contrib.admin import FieldListFilter, ListFilter
    from django.db.models import Field
    from django.db.models.expressions import Combinable
    from django.http import HttpRequest, HttpResponse, HttpResponseBase
    from django.urls import URLPattern
    from django.utils.safestring import SafeString

    from .._runtime import Runtime
    from .._updates import UpdateState

__all__ = ["RunAdmin", "SendEventForm", "SendUpdateForm"]

# The options' types exactly as django-stubs declares them (it names them with
# private aliases): an override of a mutable option must repeat its type.
_Names: TypeAlias = "list[str] | tuple[str, ...] | tuple[()]"
_Ordering: TypeAlias = "list[str | Combinable] | tuple[str | Combinable, ...] | tuple[()] | None"
_FilterOn: TypeAlias = "Field[Any, Any] | str"
_FilterClass: TypeAlias = "type[FieldListFilter]"
_Filter: TypeAlias = (
    "type[ListFilter] | _FilterOn | tuple[_FilterOn, _FilterClass] | list[_FilterOn | _FilterClass]"
)
_Display: TypeAlias = "str | Callable[[Run], str | bool]"
_DisplayLinks: TypeAlias = "list[_Display] | tuple[_Display, ...] | tuple[()] | None"
_Action: TypeAlias = (
    "Callable[[admin.ModelAdmin[Run], HttpRequest, QuerySet[Run]], HttpResponseBase | None] | str"
)

log: logging.Logger = logging.getLogger("hookflow_gen")


if TYPE_CHECKING:
    _RunAdminBase = admin.ModelAdmin[Run]
else:  # the admin classes are generic only in the type stubs
    _RunAdminBase = admin.ModelAdmin

#: A running run's page reloads itself this often (seconds).
REFRESH_SECONDS = 5


def _pretty(text: str | None) -> str:
    """JSON text re-indented for reading (as stored if it is not JSON)."""
    if text is None:
        return "-"
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


def _compact(text: str | None) -> str:
    """JSON text on one line, for a table cell (as stored if it is not JSON)."""
    if text is None:
        return "-"
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return text


def _error(error: Any) -> dict[str, str] | None:
    """A stored error as ``{"head", "traceback"}`` for the template."""
    if not isinstance(error, dict):
        return None
    data = cast("dict[str, object]", error)
    head = f"{data.get('type', '?')}: {data.get('message', '')}"
    return {"head": head, "traceback": str(data.get("traceback") or "")}


def _errors(errors: object) -> list[dict[str, str]]:
    """A stored list of errors (``Run.past_errors``) for the template."""
    items = cast("list[object]", errors) if isinstance(errors, list) else []
    return [error for error in map(_error, items) if error is not None]


def _url(name: str, run_id: str, *rest: object) -> str:
    """An admin URL of the run, its id quoted as the admin quotes primary keys."""
    return reverse(f"admin:hookflow_run_{name}", args=[quote(run_id), *rest])


def _short(run_id: str) -> str:
    """``71eb9762…65bfea``: long generated ids shortened for the list."""
    return f"{run_id[:8]}…{run_id[-6:]}" if len(run_id) > 18 else run_id


def _run_link(run_id: str) -> SafeString:
    url = _url("change", run_id)
    return format_html('<a class="hf-id" href="{}" title="{}">{}</a>', url, run_id, _short(run_id))


def _skeleton(adapter: Any) -> object:
    """An event to start typing from: the model's fields with empty values."""
    try:
        schema: dict[str, Any] = adapter.json_schema()
    except Exception:
        return {}
    empty: dict[str, object] = {"string": "", "integer": 0, "number": 0, "boolean": False}
    props = cast("dict[str, dict[str, Any]]", schema.get("properties") or {})
    return {
        name: prop["default"] if "default" in prop else empty.get(str(prop.get("type")))
        for name, prop in props.items()
    }


def _runtime() -> Runtime | None:
    from .._client import current_runtime

    try:
        return current_runtime()
    except HookflowError:
        return None


def _now() -> datetime:
    runtime = _runtime()
    return runtime.clock.now() if runtime is not None else timezone.now()


def _can_resume(runtime: Runtime | None) -> bool:
    return runtime is not None


class SendEventForm(forms.Form):
    """The event a waiting step receives, as JSON (validated against its model on send)."""

    payload: forms.JSONField = forms.JSONField(
        label="event (JSON)",
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "class": "vLargeTextField"}),
    )


class SendUpdateForm(forms.Form):
    """The request of an update a ``ctx.receive`` step waits for, as JSON."""

    request: forms.JSONField = forms.JSONField(
        label="request (JSON)",
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "class": "vLargeTextField"}),
    )


def _waiting_steps(run: Run, steps: list[Step]) -> dict[int, EventStep[Any]]:
    """The run's waiting event steps (``receive`` steps too), as the workflow yields them.

    Found by replaying the run's journal into its workflow, which is how the
    runtime itself learns them: an event step carries its model, a receive
    step its update's definition. If that fails (unknown workflow, code that
    no longer matches), the event form still works and ``notify`` validates;
    an update cannot be sent without its definition.
    """
    waiting = {s.position for s in steps if s.kind == "event" and s.status == "pending"}
    if not waiting:
        return {}
    try:
        from .._context import RunInfo
        from .._engine import Replay, Waiting
        from .._workflow import get_workflow

        runtime = _runtime()
        if runtime is None:
            return {}
        replay = Replay(
            get_workflow(run.workflow),
            run.payload,
            RunInfo(run_id=run.run_id, workflow_name=run.workflow, started_at=run.created_at),
            runtime.store.steps(run.run_id),
        )
        try:
            decision = replay.advance()
        finally:
            replay.discard()
    except Exception:
        log.debug("run %s: could not replay to find its waiting steps", run.run_id, exc_info=True)
        return {}
    if not isinstance(decision, Waiting):
        return {}
    return {
        pending.position: pending.step
        for pending in decision.pending
        if pending.position in waiting and isinstance(pending.step, EventStep)
    }


def _validation_details(exc: Any, what: str) -> str:
    """A pydantic ``ValidationError`` as ``field: message; ...``."""
    errors = cast("list[dict[str, Any]]", exc.errors())
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in errors)


def _type_name(kind: object) -> str:
    return str(getattr(kind, "__name__", kind))


def _schema_fields(adapter: Any) -> tuple[str, list[str]]:
    """The model's title and ``name: type`` lines, from its JSON schema."""
    try:
        schema: dict[str, Any] = adapter.json_schema()
    except Exception:
        return "", []
    props = cast("dict[str, dict[str, Any]]", schema.get("properties") or {})
    required = set(cast("list[str]", schema.get("required") or []))
    lines: list[str] = []
    for name, prop in props.items():
        kind = prop.get("type") or " | ".join(
            str(option.get("type", "?")) for option in prop.get("anyOf", [])
        )
        lines.append(f"{name}: {kind or 'any'}{'' if name in required else ' (optional)'}")
    return str(schema.get("title", "")), lines


@admin.register(Run)
class RunAdmin(_RunAdminBase):
    """Runs: filter by workflow and status, search by id; a timeline page per run."""

    list_display: list[_Display] | tuple[_Display, ...] | tuple[()] = (
        "run_link",
        "workflow",
        "status_badge",
        "started",
        "took",
        "step_count",
    )
    list_display_links: _DisplayLinks = None
    list_filter: ClassVar[list[_Filter] | tuple[_Filter, ...] | tuple[()]] = (
        "status",
        "workflow",
    )
    search_fields: ClassVar[_Names] = ("run_id", "parent_run_id", "continued_from")
    date_hierarchy: ClassVar[str | None] = "created_at"
    ordering: ClassVar[_Ordering] = ("-created_at",)
    actions: Sequence[_Action] | None = ("cancel_runs",)
    list_per_page: ClassVar[int] = 50

    class Media:
        css: ClassVar[dict[str, tuple[str, ...]]] = {"all": ("hookflow_gen/admin/hookflow.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return super().get_queryset(request).annotate(_step_count=Count("steps"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        # Rows are never edited; change permission on the list enables the buttons.
        return obj is None and super().has_change_permission(request)

    # -- the list ---------------------------------------------------------------------

    @admin.display(description="run", ordering="run_id")
    def run_link(self, run: Run) -> SafeString:
        """The run id (shortened; whole on hover) linking to its timeline; a child's parent."""
        if run.parent_run_id is None:
            return _run_link(run.run_id)
        return format_html(
            '{}<br><small class="hf-muted">child of {}</small>',
            _run_link(run.run_id),
            _run_link(run.parent_run_id),
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> SafeString:
        """The status, as a coloured badge."""
        return format_html('<span class="hf-badge hf-{}">{}</span>', run.status, run.status)

    @admin.display(description="started", ordering="created_at")
    def started(self, run: Run) -> str:
        """When the run started, compact."""
        return timezone.localtime(run.created_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="took")
    def took(self, run: Run) -> str:
        """How long it ran (so far, for a running run)."""
        end = run.finished_at or _now()
        return humanize(end - run.created_at)

    @admin.display(description="steps", ordering="_step_count")
    def step_count(self, run: Run) -> int:
        """How many steps the run has reached."""
        count: int = getattr(run, "_step_count", 0)
        return count

    @admin.action(description="Cancel selected runs", permissions=["change"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        """Cancel every selected run that is still running (and its children)."""
        runtime = _runtime()
        if runtime is None:
            self.message_user(request, "hookflow_gen has no runtime.", messages.ERROR)
            return
        running = queryset.filter(status=Run.Status.RUNNING).values_list("run_id", flat=True)
        cancelled = 0
        for run_id in running:
            try:
                runtime.cancel(run_id)
            except Exception as exc:
                self.message_user(request, f"Could not cancel {run_id}: {exc}", messages.ERROR)
                continue
            cancelled += 1
        self.message_user(request, f"Cancelled {cancelled} run(s).", messages.SUCCESS)

    # -- the run page -----------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        own = [
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="hookflow_run_cancel"),
            path("<path:object_id>/resume/", wrap(self.resume_view), name="hookflow_run_resume"),
            path(
                "<path:object_id>/send-event/<int:position>/",
                wrap(self.send_event_view),
                name="hookflow_run_send_event",
            ),
            path(
                "<path:object_id>/send-update/<int:position>/",
                wrap(self.send_update_view),
                name="hookflow_run_send_update",
            ),
        ]
        return own + super().get_urls()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The run's page: its steps on a time axis, its children, payload, result or error."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        object_id = unquote(object_id)
        run = Run.objects.filter(pk=object_id).first()
        if run is None:
            self.message_user(request, f"No run has id {object_id!r}.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:hookflow_run_changelist"))
        return TemplateResponse(
            request, "hookflow_gen/admin/run.html", self._page_context(request, run)
        )

    def _page_context(self, request: HttpRequest, run: Run) -> dict[str, Any]:
        runtime = _runtime()
        now = _now()
        steps = list(Step.objects.filter(run_id=run.run_id).order_by("position"))
        timeline = layout(
            created_at=run.created_at, finished_at=run.finished_at, steps=steps, now=now
        )
        children = list(
            Run.objects.filter(parent_run_id=run.run_id).order_by("created_at", "run_id")
        )
        child_ids = {child.run_id for child in children}
        waiting = _waiting_steps(run, steps)
        event_forms: list[dict[str, Any]] = []
        update_forms: list[dict[str, Any]] = []
        for step in steps:
            if step.kind != "event" or step.status != "pending":
                continue
            found = waiting.get(step.position)
            if is_update_key(step.key):
                # A receive: what it takes is an update, never a bare event.
                definition = found.update if found is not None else None
                adapter = definition.request_adapter if definition is not None else None
                title, fields = _schema_fields(adapter) if adapter is not None else ("", [])
                update_forms.append(
                    {
                        "step": step,
                        "update": (
                            definition.name
                            if definition is not None
                            else update_name_in(step.key, run.run_id)
                        ),
                        "form": (
                            SendUpdateForm(
                                initial={"request": _skeleton(adapter)},
                                auto_id=f"id_%s_{step.position}",
                            )
                            if definition is not None
                            else None
                        ),
                        "model": title,
                        "fields": fields,
                        "answer": _type_name(definition.answer_type) if definition else "",
                        "url": _url("send_update", run.run_id, step.position),
                    }
                )
                continue
            adapter = found.event_adapter if found is not None else None
            title, fields = _schema_fields(adapter) if adapter is not None else ("", [])
            initial: object = _skeleton(adapter) if adapter is not None else {}
            event_forms.append(
                {
                    "step": step,
                    "form": SendEventForm(initial={"payload": initial}),
                    "model": title,
                    "fields": fields,
                    "url": _url("send_event", run.run_id, step.position),
                }
            )
        updates = [
            {
                "row": row,
                "request": _compact(row.request),
                "answer": _compact(row.answer) if row.answer is not None else None,
                "handed_to_url": (
                    _url("change", run.continued_as)
                    if row.status == UpdateStatus.CONTINUED.value and run.continued_as
                    else None
                ),
            }
            for row in Update.objects.filter(run_id=run.run_id).order_by("id")
        ]
        rows: list[dict[str, Any]] = []
        for row in timeline.rows:
            record: Step = row.record
            rows.append(
                {
                    "row": row,
                    "result": (
                        _pretty(record.result)
                        if record.status == "completed" and record.kind not in ("sleep", "reply")
                        else ""
                    ),
                    "error": _error(record.error),
                    "child_url": (
                        _url("change", record.key)
                        if record.kind == "invoke" and record.key in child_ids
                        else None
                    ),
                }
            )
        by_position = {entry["row"].position: entry for entry in rows}
        blocks = [
            {"parallel": block.parallel, "rows": [by_position[r.position] for r in block.rows]}
            for block in timeline.blocks
        ]
        can_act = self.has_change_permission(request)
        running = run.status == "running"
        end = run.finished_at or now
        opts = self.opts
        return {
            **self.admin_site.each_context(request),
            "opts": opts,
            "app_label": opts.app_label,
            "title": f"{run.workflow} {run.run_id}",
            "subtitle": None,
            "run": run,
            "timeline": timeline,
            "blocks": blocks,
            "took": humanize(end - run.created_at),
            "children": [
                {
                    "run": child,
                    "url": _url("change", child.run_id),
                    "took": humanize((child.finished_at or now) - child.created_at),
                }
                for child in children
            ],
            "parent_url": (_url("change", run.parent_run_id) if run.parent_run_id else None),
            "continued_from_url": (
                _url("change", run.continued_from) if run.continued_from else None
            ),
            "continued_as_url": _url("change", run.continued_as) if run.continued_as else None,
            "custom_status": (
                _pretty(run.custom_status) if run.custom_status is not None else None
            ),
            "payload": _pretty(run.payload),
            "result": _pretty(run.result) if run.result is not None else None,
            "error": _error(run.error),
            # A running run's error is a problem it is waiting out (a tick
            # that failed, an unknown workflow), not how it ended.
            "problem": running,
            "tick_failures": run.tick_failures,
            "past_errors": _errors(run.past_errors),
            "refresh": REFRESH_SECONDS if running else None,
            "can_cancel": can_act and running,
            "can_resume": can_act and run.status == "failed" and _can_resume(runtime),
            "can_delete": self.has_delete_permission(request, run) and not running,
            "event_forms": event_forms if can_act and running else [],
            "update_forms": update_forms if can_act and running else [],
            "updates": updates,
            "cancel_url": _url("cancel", run.run_id),
            "resume_url": _url("resume", run.run_id),
            "delete_url": _url("delete", run.run_id),
            "list_url": reverse("admin:hookflow_run_changelist"),
            "now": now,
        }

    def _act(self, request: HttpRequest, object_id: str) -> tuple[Run | None, HttpResponse]:
        """Checks shared by the buttons: POST, permission, the run exists."""
        object_id = unquote(object_id)
        page = HttpResponseRedirect(_url("change", object_id))
        if request.method != "POST":
            return None, HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        run = Run.objects.filter(pk=object_id).first()
        if run is None:
            self.message_user(request, f"No run has id {object_id!r}.", messages.ERROR)
            return None, HttpResponseRedirect(reverse("admin:hookflow_run_changelist"))
        return run, page

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: cancel the run and its children."""
        run, page = self._act(request, object_id)
        if run is None:
            return page
        runtime = _runtime()
        if run.status != "running":
            self.message_user(
                request, f"The run is {run.status}; nothing to cancel.", messages.WARNING
            )
        elif runtime is None:
            self.message_user(request, "hookflow_gen has no runtime.", messages.ERROR)
        else:
            try:
                runtime.cancel(run.run_id)
            except Exception as exc:
                log.exception("admin: could not cancel run %s", run.run_id)
                self.message_user(request, f"Could not cancel the run: {exc}", messages.ERROR)
            else:
                self.message_user(
                    request, "Cancelled the run (and its children).", messages.SUCCESS
                )
        return page

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: resume a failed run, where the runtime can."""
        run, page = self._act(request, object_id)
        if run is None:
            return page
        runtime = _runtime()
        if run.status != "failed":
            self.message_user(
                request, f"The run is {run.status}; only a failed run resumes.", messages.WARNING
            )
        elif runtime is None or not _can_resume(runtime):
            self.message_user(request, "This runtime cannot resume runs.", messages.ERROR)
        else:
            try:
                runtime.resume(run.run_id)
            except Exception as exc:
                log.exception("admin: could not resume run %s", run.run_id)
                self.message_user(request, f"Could not resume the run: {exc}", messages.ERROR)
            else:
                self.message_user(request, "Resumed the run.", messages.SUCCESS)
        return page

    def send_event_view(self, request: HttpRequest, object_id: str, position: int) -> HttpResponse:
        """POST: send the event the step at ``position`` waits for, validated against its model."""
        run, page = self._act(request, object_id)
        if run is None:
            return page
        step = Step.objects.filter(run_id=run.run_id, position=position).first()
        if step is None or step.kind != "event" or step.status != "pending" or not step.key:
            self.message_user(
                request, f"Step #{position} waits for no event now.", messages.WARNING
            )
            return page
        if is_update_key(step.key):
            # A bare event on an update's key would skip the update's row, so its
            # reply would answer nobody: updates go through send_update_view.
            self.message_user(
                request,
                f"Step #{position} waits for an update, not an event; send it with its "
                "Send update form.",
                messages.ERROR,
            )
            return page
        form = SendEventForm(request.POST)
        if not form.is_valid():
            errors = "; ".join(str(e) for e in form.errors.get("payload", ["invalid"]))
            self.message_user(request, f"The event is not valid JSON: {errors}", messages.ERROR)
            return page
        payload = form.cleaned_data["payload"]
        found = _waiting_steps(run, [step]).get(position)
        if found is not None:
            import pydantic

            try:
                found.event_adapter.validate_python(payload)
            except pydantic.ValidationError as exc:
                details = _validation_details(exc, "event")
                self.message_user(
                    request, f"The event does not fit step {step.name!r}: {details}", messages.ERROR
                )
                return page
        runtime = _runtime()
        if runtime is None:
            self.message_user(request, "hookflow_gen has no runtime.", messages.ERROR)
            return page
        try:
            delivered = runtime.notify(step.key, payload)
        except HookflowError as exc:
            self.message_user(request, f"The event was not sent: {exc}", messages.ERROR)
        except Exception as exc:
            log.exception("admin: could not send event %r", step.key)
            self.message_user(request, f"The event was not sent: {exc}", messages.ERROR)
        else:
            if delivered:
                self.message_user(
                    request,
                    f"Sent event {step.key!r}: {delivered} waiting run(s) received it.",
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    f"No run waited for {step.key!r} any more; the event is kept for the next "
                    "step that waits on that key.",
                    messages.WARNING,
                )
        return page

    def send_update_view(self, request: HttpRequest, object_id: str, position: int) -> HttpResponse:
        """POST: send the update the ``receive`` step at ``position`` waits for.

        The request is validated against the update's request type and sent
        through ``Runtime.send_update``, as ``handle.update`` sends it, under
        an id of its own (``admin-...``). The view does not wait: an answer
        or rejection the workflow gave at once is the message, and the run
        page lists every update with its answer.
        """
        run, page = self._act(request, object_id)
        if run is None:
            return page
        step = Step.objects.filter(run_id=run.run_id, position=position).first()
        if (
            step is None
            or step.kind != "event"
            or step.status != "pending"
            or not is_update_key(step.key)
        ):
            self.message_user(
                request, f"Step #{position} waits for no update now.", messages.WARNING
            )
            return page
        found = _waiting_steps(run, [step]).get(position)
        definition = found.update if found is not None else None
        if definition is None:
            self.message_user(
                request,
                f"The update step #{position} waits for could not be loaded from the "
                "workflow's code, so its request cannot be checked; send it with "
                "handle.update().",
                messages.ERROR,
            )
            return page
        form = SendUpdateForm(request.POST)
        if not form.is_valid():
            errors = "; ".join(str(e) for e in form.errors.get("request", ["invalid"]))
            self.message_user(request, f"The request is not valid JSON: {errors}", messages.ERROR)
            return page
        import pydantic

        try:
            value = definition.request_adapter.validate_python(form.cleaned_data["request"])
        except pydantic.ValidationError as exc:
            details = _validation_details(exc, "request")
            self.message_user(
                request,
                f"The request does not fit update {definition.name!r}: {details}",
                messages.ERROR,
            )
            return page
        runtime = _runtime()
        if runtime is None:
            self.message_user(request, "hookflow_gen has no runtime.", messages.ERROR)
            return page
        update_id = f"admin-{uuid.uuid4().hex[:12]}"
        try:
            state = runtime.send_update(run.run_id, definition, value, update_id)
        except HookflowError as exc:
            self.message_user(request, f"The update was not sent: {exc}", messages.ERROR)
            return page
        except Exception as exc:
            log.exception("admin: could not send update %r to run %s", definition.name, run.run_id)
            self.message_user(request, f"The update was not sent: {exc}", messages.ERROR)
            return page
        # An inline scheduler has run the workflow on by now; a worker answers later.
        state = runtime.store.get_update(state.run_id, update_id) or state
        self._tell_update(request, definition.name, state)
        return page

    def _tell_update(self, request: HttpRequest, name: str, state: UpdateState) -> None:
        sent = f"Sent update {name!r} as {state.update_id}"
        if state.status is UpdateStatus.ANSWERED:
            answer = state.answer if state.answer is not None else "null"
            self.message_user(request, f"{sent}; the workflow answered {answer}.", messages.SUCCESS)
        elif state.status is UpdateStatus.REJECTED:
            self.message_user(
                request, f"{sent}; the workflow rejected it: {state.reason}", messages.WARNING
            )
        else:
            self.message_user(
                request,
                f"{sent}; the workflow has not answered it yet (its answer shows under Updates).",
                messages.INFO,
            )
