"""hookflow_gen without opentelemetry installed: it imports, starts and traces nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hookflow_gen_works_without_opentelemetry() -> None:
    """With ``opentelemetry`` unimportable, Django sets up and the runtime has no tracer."""
    script = textwrap.dedent(
        """
        import os, sys
        sys.path[:0] = [".", "examples"]
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        import django
        django.setup()
        import hookflow_gen
        from hookflow_gen._client import current_runtime
        from hookflow_gen.django import signals  # noqa: F401
        try:
            import hookflow_gen._tracing  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("opentelemetry was importable")
        runtime = current_runtime()
        print("tracer", runtime.tracer, "observer", type(runtime.observer).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tracer None observer SignalObserver"
