"""Type completeness of the published API, as ``pyright --verifytypes`` measures it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# The lowest acceptable score over every public module, the Django app included.
# What is still ambiguous is AppConfig.default_auto_field, whose exact type
# django-stubs spells with a private protocol. Raise it, never lower it.
PINNED_SCORE = 0.993

ROOT = Path(__file__).resolve().parents[2]


def _verifytypes() -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--verifytypes",
            "hookflow_gen",
            "--ignoreexternal",
            "--outputjson",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,  # it exits 1 below 100%: the JSON says how far
    )
    report: dict[str, Any] = json.loads(done.stdout)["typeCompleteness"]
    return report


def test_type_completeness_is_pinned() -> None:
    """Every symbol outside the Django app is fully typed, and the total keeps its score."""
    report = _verifytypes()
    ambiguous = [
        symbol["name"]
        for symbol in report["symbols"]
        if not symbol["isTypeKnown"] and not symbol["name"].startswith("hookflow_gen.django")
    ]
    assert ambiguous == []
    assert report["exportedSymbolCounts"]["withUnknownType"] == 0
    assert report["completenessScore"] >= PINNED_SCORE
