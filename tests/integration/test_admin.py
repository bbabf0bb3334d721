"""The admin's run page and its buttons, through Django's test client.

What the page draws is checked in headless Chromium (``tests/browser``);
these tests cover what the buttons do and that every refusal is a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.urls import reverse

from hookflow_gen import RunStatus
from hookflow_gen.django.models import Event, Run, Step, Update
from tests.conftest import run_worker
from tests.djangoapp.update_workflows import Book, Deposit, Ledger, chained, deposit, ledger
from tests.djangoapp.workflows import Numbers, Wait, approval, doomed, linear, parent

if TYPE_CHECKING:
    from django.test import Client

    from hookflow_gen._runtime import Runtime

pytestmark = pytest.mark.django_db


def _page(run_id: str) -> str:
    return reverse("admin:hookflow_run_change", args=[run_id])


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _waiting(runtime: Runtime, key: str) -> str:
    handle = approval.start(Wait(key=key))
    run_worker(runtime)
    return handle.run_id


def test_cancel_button_cancels_a_running_run(admin_client: Client, runtime: Runtime) -> None:
    """POST to the cancel button cancels the run and says so."""
    run_id = _waiting(runtime, "adm-1")
    assert 'id="hf-cancel"' in admin_client.get(_page(run_id)).content.decode()
    url = reverse("admin:hookflow_run_cancel", args=[run_id])
    response = admin_client.post(url, follow=True)
    assert response.status_code == 200
    assert "Cancelled the run (and its children)." in _messages(response)
    assert Run.objects.get(pk=run_id).status == RunStatus.CANCELLED.value
    again = admin_client.post(url, follow=True)
    assert "The run is cancelled; nothing to cancel." in _messages(again)
    assert 'id="hf-cancel"' not in again.content.decode()


def test_buttons_answer_get_with_405(admin_client: Client, runtime: Runtime) -> None:
    """The buttons only act on POST; a GET changes nothing."""
    run_id = _waiting(runtime, "adm-2")
    for name in ("admin:hookflow_run_cancel", "admin:hookflow_run_resume"):
        assert admin_client.get(reverse(name, args=[run_id])).status_code == 405
    assert Run.objects.get(pk=run_id).status == RunStatus.RUNNING.value


def test_send_event_refuses_bad_json_and_the_wrong_model(
    admin_client: Client, runtime: Runtime
) -> None:
    """Malformed JSON and an event that does not fit the step's model are messages; nothing sent."""
    run_id = _waiting(runtime, "adm-3")
    url = reverse("admin:hookflow_run_send_event", args=[run_id, 0])
    bad_json = admin_client.post(url, {"payload": "{not json"}, follow=True)
    assert bad_json.status_code == 200
    assert any(m.startswith("The event is not valid JSON") for m in _messages(bad_json))
    wrong = admin_client.post(url, {"payload": '{"approved_by": ["ann"]}'}, follow=True)
    assert wrong.status_code == 200
    [message] = _messages(wrong)
    assert message.startswith("The event does not fit step 'approval': approved_by:")
    step = Step.objects.get(run_id=run_id, position=0)
    assert step.status == "pending"


def test_send_event_delivers_to_the_waiting_step(admin_client: Client, runtime: Runtime) -> None:
    """A valid event is delivered through notify and the run moves on."""
    run_id = _waiting(runtime, "adm-4")
    page = admin_client.get(_page(run_id)).content.decode()
    assert "model <strong>Approval</strong>" in page and "approved_by: string" in page
    url = reverse("admin:hookflow_run_send_event", args=[run_id, 0])
    response = admin_client.post(url, {"payload": '{"approved_by": "ann"}'}, follow=True)
    assert "Sent event 'adm-4': 1 waiting run(s) received it." in _messages(response)
    run_worker(runtime)
    run = Run.objects.get(pk=run_id)
    assert run.status == RunStatus.COMPLETED.value and run.result == '"ann"'
    late = admin_client.post(url, {"payload": '{"approved_by": "bob"}'}, follow=True)
    assert "Step #0 waits for no event now." in _messages(late)


def test_resume_is_refused_for_a_run_that_did_not_fail(
    admin_client: Client, runtime: Runtime
) -> None:
    """A completed run shows no resume button, and a resume POST is refused with a message."""
    handle = linear.start(Numbers(a=1, b=1))
    run_worker(runtime)
    assert handle.status is RunStatus.COMPLETED
    assert 'id="hf-resume"' not in admin_client.get(_page(handle.run_id)).content.decode()
    response = admin_client.post(
        reverse("admin:hookflow_run_resume", args=[handle.run_id]), follow=True
    )
    assert "The run is completed; only a failed run resumes." in _messages(response)


def test_resume_runs_a_failed_run_again(admin_client: Client, runtime: Runtime) -> None:
    """A failed run shows its traceback and a resume button; resuming runs it again."""
    handle = doomed.start(Numbers(a=1, b=1))
    run_worker(runtime)
    assert handle.status is RunStatus.FAILED
    html = admin_client.get(_page(handle.run_id)).content.decode()
    assert 'id="hf-resume"' in html and "boom" in html and "Traceback" in html
    response = admin_client.post(
        reverse("admin:hookflow_run_resume", args=[handle.run_id]), follow=True
    )
    assert "Resumed the run." in _messages(response)
    state = handle.state()
    assert state.status is RunStatus.RUNNING and len(state.past_errors) == 1
    run_worker(runtime)
    assert handle.status is RunStatus.FAILED  # the step still raises: it failed again, visibly
    html = admin_client.get(_page(handle.run_id)).content.decode()
    assert 'id="hf-past-errors"' in html and "Resumed after failing 1 time:" in html


def test_runtime_errors_become_messages(
    admin_client: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception from the runtime while cancelling is shown as a message, not a 500."""
    run_id = _waiting(runtime, "adm-5")

    def broken(run_id: str) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(runtime, "cancel", broken)
    response = admin_client.post(reverse("admin:hookflow_run_cancel", args=[run_id]), follow=True)
    assert response.status_code == 200
    assert "Could not cancel the run: database went away" in _messages(response)


def test_unknown_run_is_a_message(admin_client: Client, runtime: Runtime) -> None:
    """A run id that does not exist redirects to the list with a message, for pages and buttons."""
    page = admin_client.get(_page("no-such-run"), follow=True)
    assert page.status_code == 200 and "No run has id 'no-such-run'." in _messages(page)
    button = admin_client.post(
        reverse("admin:hookflow_run_cancel", args=["no-such-run"]), follow=True
    )
    assert "No run has id 'no-such-run'." in _messages(button)


def test_view_only_staff_see_no_buttons_and_cannot_press_them(
    client: Client, runtime: Runtime, django_user_model: Any
) -> None:
    """A staff user with view permission only sees the timeline but no buttons; POSTs get 403."""
    run_id = _waiting(runtime, "adm-6")
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(user)
    html = client.get(_page(run_id)).content.decode()
    assert 'id="hf-timeline"' in html
    assert 'id="hf-cancel"' not in html and "Send event" not in html
    assert client.post(reverse("admin:hookflow_run_cancel", args=[run_id])).status_code == 403
    assert Run.objects.get(pk=run_id).status == RunStatus.RUNNING.value


def test_page_of_a_run_whose_workflow_is_gone(admin_client: Client, runtime: Runtime) -> None:
    """A run of a workflow no longer registered still shows; its event form has no model hints."""
    run_id = _waiting(runtime, "adm-7")
    Run.objects.filter(pk=run_id).update(workflow="renamed_since")
    response = admin_client.get(_page(run_id))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Send event" in html and "model <strong>" not in html


def test_parent_and_child_pages_link_each_other(admin_client: Client, runtime: Runtime) -> None:
    """A parent's page links its child run, and the child's page links back to the parent."""
    handle = parent.start(Numbers(a=1, b=2))
    run_worker(runtime)
    child_id = f"{handle.run_id}-0"
    assert f'href="{_page(child_id)}"' in admin_client.get(_page(handle.run_id)).content.decode()
    child = admin_client.get(_page(child_id)).content.decode()
    assert f'id="hf-parent" class="hf-id" href="{_page(handle.run_id)}"' in child


def test_runs_list_shows_humanized_durations(admin_client: Client, runtime: Runtime) -> None:
    """The runs list shows how long each run took in words, and its step count."""
    handle = linear.start(Numbers(a=1, b=2))
    run_worker(runtime)
    html = admin_client.get(reverse("admin:hookflow_run_changelist")).content.decode()
    assert f'title="{handle.run_id}"' in html
    assert '<td class="field-took">0 ms</td>' in html  # the fake clock stood still
    assert '<td class="field-step_count">2</td>' in html


def test_run_ids_with_slashes_and_underscores(admin_client: Client, runtime: Runtime) -> None:
    """Run ids the admin must quote in URLs ("order_7/a") open, and their buttons work."""
    handle = approval.start(Wait(key="adm-8"), run_id="order_7/a")
    run_worker(runtime)
    page = reverse("admin:hookflow_run_change", args=[quote(handle.run_id)])
    html = admin_client.get(page).content.decode()
    assert "order_7/a" in html and 'id="hf-cancel"' in html
    cancel = reverse("admin:hookflow_run_cancel", args=[quote(handle.run_id)])
    assert f'action="{cancel}"' in html
    response = admin_client.post(cancel, follow=True)
    assert "Cancelled the run (and its children)." in _messages(response)
    assert handle.status is RunStatus.CANCELLED


# -- a run waiting in ctx.receive: updates, never a bare event ----------------------------


def _receiving(runtime: Runtime, deposits: int = 1) -> str:
    handle = ledger.start(Ledger(deposits=deposits))
    run_worker(runtime)
    assert Step.objects.get(run_id=handle.run_id, position=0).status == "pending"
    return handle.run_id


def test_a_receive_step_offers_send_update_and_no_send_event(
    admin_client: Client, runtime: Runtime
) -> None:
    """The form of a receive step sends an update; a bare event to its key is refused."""
    run_id = _receiving(runtime)
    html = admin_client.get(_page(run_id)).content.decode()
    assert 'id="hf-send-update-0"' in html and "Send event" not in html
    assert "Update <strong>deposit</strong>, request <strong>Deposit</strong>" in html
    assert "answered with <strong>Balance</strong>" in html and "amount: integer" in html
    assert "waiting for update &#x27;deposit&#x27;" in html
    assert 'id="hf-updates"' not in html  # none sent yet
    url = reverse("admin:hookflow_run_send_event", args=[run_id, 0])
    refused = admin_client.post(url, {"payload": '{"amount": 5}'}, follow=True)
    assert _messages(refused) == [
        "Step #0 waits for an update, not an event; send it with its Send update form."
    ]
    assert not Event.objects.exists() and not Update.objects.exists()
    assert Step.objects.get(run_id=run_id, position=0).status == "pending"


def test_send_update_checks_the_request_then_shows_the_answer(
    admin_client: Client, runtime: Runtime
) -> None:
    """Bad JSON and a request that does not fit are refused; a good one is answered by a worker."""
    run_id = _receiving(runtime)
    url = reverse("admin:hookflow_run_send_update", args=[run_id, 0])
    bad_json = admin_client.post(url, {"request": "{not json"}, follow=True)
    assert any(m.startswith("The request is not valid JSON") for m in _messages(bad_json))
    too_big = admin_client.post(url, {"request": '{"amount": 5000}'}, follow=True)
    [message] = _messages(too_big)
    assert message.startswith("The request does not fit update 'deposit': amount: ")
    assert "less than or equal to 1000" in message
    assert not Update.objects.exists()
    sent = admin_client.post(url, {"request": '{"amount": 40}'}, follow=True)
    [message] = _messages(sent)
    row = Update.objects.get(run_id=run_id)
    assert row.update_id.startswith("admin-") and row.status == "pending"
    assert message == (
        f"Sent update 'deposit' as {row.update_id}; the workflow has not answered it yet "
        "(its answer shows under Updates)."
    )
    assert "not answered yet" in sent.content.decode()
    run_worker(runtime)
    page = admin_client.get(_page(run_id)).content.decode()
    assert Run.objects.get(pk=run_id).status == RunStatus.COMPLETED.value
    table = page[page.index('id="hf-updates"') :]
    assert row.update_id in table and "answered" in table
    assert "{&quot;deposits&quot;: 1, &quot;total&quot;: 40}" in table
    late = admin_client.post(url, {"request": '{"amount": 1}'}, follow=True)
    assert _messages(late) == ["Step #0 waits for no update now."]


@pytest.mark.django_db(transaction=True)
def test_send_update_shows_an_answer_or_rejection_given_at_once(
    admin_client: Client, inline_runtime: Runtime
) -> None:
    """With the inline scheduler the workflow answers before the redirect; the message says how."""
    handle = ledger.start(Ledger(deposits=2))
    run_id = handle.run_id
    url = reverse("admin:hookflow_run_send_update", args=[run_id, 0])
    rejected = admin_client.post(url, {"request": '{"amount": -3}'}, follow=True)
    [message] = _messages(rejected)
    assert message.endswith("; the workflow rejected it: a deposit of -3 is negative")
    position = Step.objects.get(run_id=run_id, kind="event", status="pending").position
    url = reverse("admin:hookflow_run_send_update", args=[run_id, position])
    answered = admin_client.post(url, {"request": '{"amount": 5}'}, follow=True)
    [message] = _messages(answered)
    assert message.endswith('; the workflow answered {"total":5,"deposits":1}.')
    statuses = sorted(Update.objects.filter(run_id=run_id).values_list("status", flat=True))
    assert statuses == ["answered", "rejected"]
    table = answered.content.decode()
    assert "rejected: a deposit of -3 is negative" in table


def test_a_receive_whose_workflow_is_gone_has_no_form(
    admin_client: Client, runtime: Runtime
) -> None:
    """Without the update's definition nothing can be checked: a note, and a refused POST."""
    run_id = _receiving(runtime)
    Run.objects.filter(pk=run_id).update(workflow="renamed_since")
    html = admin_client.get(_page(run_id)).content.decode()
    assert "It waits for update <strong>deposit</strong>" in html
    assert "could not be loaded" in html
    assert "hf-send-update-0" not in html and "Send event" not in html
    url = reverse("admin:hookflow_run_send_update", args=[run_id, 0])
    response = admin_client.post(url, {"request": '{"amount": 5}'}, follow=True)
    [message] = _messages(response)
    assert message.startswith("The update step #0 waits for could not be loaded")
    assert not Update.objects.exists()


def test_a_continued_run_lists_the_updates_it_handed_on(
    admin_client: Client, runtime: Runtime
) -> None:
    """Updates a run had not received when it continued are listed as handed on, with a link."""
    chained.start(Book(runs_left=1), run_id="adm-chain")
    for update_id, amount in (("a", 1), ("b", 2)):
        runtime.send_update("adm-chain", deposit, Deposit(amount=amount), update_id)
    run_worker(runtime)
    html = admin_client.get(_page("adm-chain")).content.decode()
    handed = html[html.index('id="hf-update-b"') :]
    assert "handed on to" in handed[: handed.index("</tr>")]
    assert f'href="{_page("adm-chain-continued-1")}"' in handed
    nxt = admin_client.get(_page("adm-chain-continued-1")).content.decode()
    answered = nxt[nxt.index('id="hf-update-b"') :]
    assert "answered" in answered[: answered.index("</tr>")]
