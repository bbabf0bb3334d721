"""Django settings for the benchmarks: ``HOOKFLOW_BENCH_DB`` = ``sqlite`` or ``postgres``.

SQLite: a file in the temp dir, WAL, ``synchronous=NORMAL``,
``transaction_mode=IMMEDIATE`` (the settings the example project uses).
PostgreSQL: database ``hookflow_bench`` on 127.0.0.1:5432, created fresh by
the benchmark.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

SECRET_KEY = "benchmarks"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django.contrib.contenttypes", "hookflow_gen.django", "bench_app"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DB = os.environ.get("HOOKFLOW_BENCH_DB", "sqlite")
DATABASES: dict[str, dict[str, Any]]
if DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": 5432,
            "NAME": os.environ.get("HOOKFLOW_BENCH_PG_NAME", "hookflow_bench"),
            "USER": os.environ.get("HOOKFLOW_BENCH_PG_USER", "postgres"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get(
                "HOOKFLOW_BENCH_SQLITE", str(Path(tempfile.gettempdir()) / "hookflow_bench.sqlite3")
            ),
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "timeout": 30,
            },
        }
    }

HOOKFLOW = {
    "SCHEDULER": "database",
    "POLL_INTERVAL": 0.01,
    "TICK_BUDGET": 10,
    # HOOKFLOW_BENCH_TRACING=off measures the hot path with no tracer at all.
    "TRACING": os.environ.get("HOOKFLOW_BENCH_TRACING", "on") != "off",
}

# ``HOOKFLOW_BENCH_CONN_MAX_AGE``: seconds a worker keeps its connections
# between ticks (Django's ``CONN_MAX_AGE``; default 0, a connection per tick).
for _database in DATABASES.values():
    _database["CONN_MAX_AGE"] = float(os.environ.get("HOOKFLOW_BENCH_CONN_MAX_AGE", "0"))
