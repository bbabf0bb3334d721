"""``python tests/manage.py ...`` with the test settings (worker subprocesses use it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    # As pytest's ``pythonpath`` does: the project root and the example project.
    sys.path[:0] = [str(root), str(root / "examples")]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
