# pyright: reportConstantRedefinition=false
"""Settings of the web server process the QStash crash-and-fault suite kills and restarts.

The test settings, with the QStash scheduler configured from the environment
the suite sets (``HOOKFLOW_CHAOS_*``) and the suite's URLs.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403  # the test settings, then what differs
from tests.settings import LOGGING

ROOT_URLCONF = "tests.e2e.chaos_flows"

HOOKFLOW = {
    "SCHEDULER": "qstash",
    "LEASE": float(os.environ.get("HOOKFLOW_CHAOS_LEASE", "3")),
    "QSTASH": {
        "TOKEN": os.environ["HOOKFLOW_CHAOS_TOKEN"],
        "URL": os.environ["HOOKFLOW_CHAOS_QSTASH_URL"],
        "CURRENT_SIGNING_KEY": os.environ["HOOKFLOW_CHAOS_CURRENT_KEY"],
        "NEXT_SIGNING_KEY": os.environ["HOOKFLOW_CHAOS_NEXT_KEY"],
        "BASE_URL": os.environ["HOOKFLOW_CHAOS_BASE_URL"],
        "PUBLISH_RETRIES": 0,
        "RETRY_DELAY": "300",
        "RECOVER_AFTER": float(os.environ.get("HOOKFLOW_CHAOS_RECOVER_AFTER", "4")),
    },
}

LOGGING = {
    **LOGGING,
    "loggers": {"hookflow_gen": {"handlers": ["console"], "level": "WARNING"}},
}
