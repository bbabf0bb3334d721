"""The app's URLs: ``path("hookflow/", include("hookflow_gen.django.urls"))``.

- ``qstash/``: QStash wake-up deliveries (``hookflow:qstash``).
- ``qstash/call/``: QStash callbacks of ``call`` steps (``hookflow:qstash-call``).
- ``qstash/sweep/``: the sweep a QStash schedule calls (``hookflow:qstash-sweep``;
  ``manage.py hookflow qstash-schedule`` creates the schedule).
"""

from __future__ import annotations

from django.urls import URLPattern, path

from . import views

app_name = "hookflow"

urlpatterns: list[URLPattern] = [
    path("qstash/", views.qstash_webhook, name="qstash"),
    path("qstash/call/", views.qstash_call, name="qstash-call"),
    path("qstash/sweep/", views.qstash_sweep, name="qstash-sweep"),
    path("qstash/schedule/", views.qstash_schedule, name="qstash-schedule"),
]
