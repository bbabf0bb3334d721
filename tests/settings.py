"""Django settings for the test suite.

``HOOKFLOW_TEST_DB`` picks the database: ``sqlite`` (default: a file in the
temp dir, WAL, ``transaction_mode: IMMEDIATE``, so threads and worker
processes can share it) or ``postgres`` (127.0.0.1:5432, trust auth).
Worker subprocesses started by tests set ``HOOKFLOW_TEST_DB_NAME`` to the
test database's name, and may shorten ``LEASE``/``POLL_INTERVAL`` with
``HOOKFLOW_TEST_LEASE``/``HOOKFLOW_TEST_POLL``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "hookflow-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "hookflow_gen.django",
    "tests.djangoapp",
    "shop",  # the example project's app: its workflows are tested too
    "tests.chaos",  # the crash suite's workflows (tests/chaos/workflows.py)
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES: list[dict[str, Any]] = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The live server (end-to-end tests) serves static files and needs a prefix.
STATIC_URL = "static/"

TEST_DB = os.environ.get("HOOKFLOW_TEST_DB", "sqlite")
# Set in worker subprocesses: connect straight to the test database.
_TEST_DB_NAME = os.environ.get("HOOKFLOW_TEST_DB_NAME")


def _databases() -> dict[str, dict[str, Any]]:
    if TEST_DB == "postgres":
        return {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": "127.0.0.1",
                "PORT": 5432,
                "NAME": _TEST_DB_NAME or "test",
                "USER": os.environ.get("HOOKFLOW_TEST_DB_USER", "postgres"),
                # Per process, so test runs started side by side do not collide.
                "TEST": {"NAME": f"test_hookflow_{os.getpid()}"},
            }
        }
    if TEST_DB == "sqlite":
        # A file, not memory: threads and worker processes must share it.
        path = _TEST_DB_NAME or str(
            Path(tempfile.gettempdir()) / f"hookflow-test-{os.getpid()}.sqlite3"
        )
        return {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": path,
                "OPTIONS": {
                    "transaction_mode": "IMMEDIATE",
                    "timeout": 20,
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                },
                "TEST": {"NAME": path},
            }
        }
    raise RuntimeError(f"HOOKFLOW_TEST_DB must be 'sqlite' or 'postgres', not {TEST_DB!r}")


DATABASES = _databases()

HOOKFLOW = {
    "SCHEDULER": "database",
    "LEASE": float(os.environ.get("HOOKFLOW_TEST_LEASE", "300")),
    "POLL_INTERVAL": float(os.environ.get("HOOKFLOW_TEST_POLL", "0.05")),
    # DjangoStore plus the durability invariant checked after every commit
    # (and, in crash-suite workers, kill points): see tests/_invariant.py.
    "STORE": "tests._invariant.InvariantStore",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"hookflow_gen": {"handlers": ["console"], "level": "INFO"}},
}
