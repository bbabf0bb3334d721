"""The Django app: durable runs in your database, scheduled by it or by QStash.

Add ``"hookflow_gen.django"`` to ``INSTALLED_APPS``, run ``migrate``, and
start a worker with ``python manage.py hookflow worker``. Configure it with
``settings.HOOKFLOW`` (see ``HookflowSettings``). Workflows are found in the
``workflows`` module of every installed app.

Importing this package needs no configured settings: models are imported
only by the functions that use them.
"""

from ._settings import HookflowSettings as HookflowSettings
from ._settings import get_settings as get_settings
from ._store import DjangoStore as DjangoStore
from .apps import build_runtime as build_runtime

__all__ = ["DjangoStore", "HookflowSettings", "build_runtime", "get_settings"]
