"""``manage.py hookflow qstash-dev``: the local QStash-compatible server in the foreground."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from hookflow_gen.testing.qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    DEFAULT_TOKEN,
)

ROOT = Path(__file__).resolve().parents[2]


def test_qstash_dev_prints_the_exports_and_serves_the_api() -> None:
    """The command prints Upstash's dev-server export lines and answers GET /v2/keys."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "manage.py"),
            "hookflow",
            "qstash-dev",
            "--port",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(4)]
        url = lines[0].removeprefix("export QSTASH_URL=")
        assert url.startswith("http://127.0.0.1:")
        assert lines[1:] == [
            f"export QSTASH_TOKEN={DEFAULT_TOKEN}",
            f"export QSTASH_CURRENT_SIGNING_KEY={DEFAULT_CURRENT_SIGNING_KEY}",
            f"export QSTASH_NEXT_SIGNING_KEY={DEFAULT_NEXT_SIGNING_KEY}",
        ]
        keys = httpx.get(
            f"{url}/v2/keys", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}, timeout=10
        )
        assert keys.json() == {
            "current": DEFAULT_CURRENT_SIGNING_KEY,
            "next": DEFAULT_NEXT_SIGNING_KEY,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == 0
