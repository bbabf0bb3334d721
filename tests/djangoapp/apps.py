"""A small app whose workflows and models the integration tests use."""

from __future__ import annotations

from django.apps import AppConfig


class DjangoAppConfig(AppConfig):
    """The test app."""

    name = "tests.djangoapp"
    label = "djangoapp"
    default_auto_field = "django.db.models.BigAutoField"
