"""The crash suite's app: only so its ``workflows`` module is autodiscovered in workers."""

from __future__ import annotations

from django.apps import AppConfig


class ChaosConfig(AppConfig):
    """``tests.chaos`` in ``INSTALLED_APPS``."""

    name = "tests.chaos"
    label = "hookflow_chaos"
