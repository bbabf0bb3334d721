"""Peak memory of one large run, and whether a worker's memory stays flat across many runs.

Modes (each meant for a fresh process: it configures Django):

``peak``
    One n-step run (default 10,000 steps of the small pydantic ``Item``) of
    ``bench_app.workflows.steps``, run to completion through the in-process
    runtime on SQLite (``DjangoStore``, the database scheduler, one
    ``Worker`` tick loop, ``bench_settings``: WAL, ``synchronous=NORMAL``).
    Reports the resident set after Django setup and migrations (the
    baseline) and the process's peak resident set
    (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KB on Linux), so the
    run's own share is ``peak - baseline``.

``peer-peak``
    The same figures for django-hookflow 0.0.4 running one n-step run through
    its in-process harness (``peers/django_hookflow_harness.py``; persistence
    off unless ``--persistence``).

``leak``
    One ``Worker`` ticks ``--runs`` (default 1,000) consecutive 10-step runs,
    one after another (start a run, tick until idle). Every ``--every`` runs
    it samples the resident set (psutil) and ``tracemalloc``'s current traced
    size, after a ``gc.collect()``. A first batch of runs is done before the
    first sample so import-time caches (Django's, pydantic's) are filled.
    Reported: the samples, first/last, the least-squares slope per 100 runs,
    the number of live generators the runtime holds at the end
    (``Runtime._warm``) and the registry sizes. ``--warm-runs`` overrides
    ``HOOKFLOW["WARM_RUNS"]``: the runtime keeps up to that many live
    generators of *unfinished* runs between ticks by design, so a plateau up
    to that bound is expected; runs that finish leave the cache at once.
    ``tracemalloc`` slows the run down; RSS is sampled with it on.

Run: ``uv run python benchmarks/memory.py peak --n 10000`` /
``uv run python benchmarks/memory.py leak --runs 1000 [--warm-runs 0]`` (JSON on stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _rss_kb() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss // 1024)


def _maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _setup_bench_django(database: Path) -> None:
    """``bench_settings`` on a fresh SQLite file, migrated."""
    os.environ["HOOKFLOW_BENCH_DB"] = "sqlite"
    os.environ["HOOKFLOW_BENCH_SQLITE"] = str(database)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _runtime(warm_runs: int | None) -> Any:
    from hookflow_gen._client import current_runtime
    from hookflow_gen.django import build_runtime, get_settings

    if warm_runs is None:
        return current_runtime()
    return build_runtime(dataclasses.replace(get_settings(), warm_runs=warm_runs))


def peak(n: int) -> dict[str, Any]:
    """One n-step run to completion; baseline and peak RSS in KB."""
    with tempfile.TemporaryDirectory(prefix="hookflow_mem_") as tmp:
        _setup_bench_django(Path(tmp) / "peak.sqlite3")
        from bench_app.workflows import Steps, steps
        from hookflow_gen.django.management.commands.hookflow import Worker

        runtime = _runtime(None)
        gc.collect()
        baseline_rss = _rss_kb()
        baseline_max = _maxrss_kb()
        started = time.perf_counter()
        handle = steps.start(Steps(n=n))
        ticks = Worker(runtime, poll_interval=0.01).run(until_idle=0)
        wall = time.perf_counter() - started
        result = handle.result()
        if result != n * (n - 1) // 2:
            raise RuntimeError(f"the run returned {result!r}")
        return {
            "engine": "hookflow_gen",
            "n": n,
            "baseline_rss_kb": baseline_rss,
            "baseline_maxrss_kb": baseline_max,
            "peak_rss_kb": _maxrss_kb(),
            "end_rss_kb": _rss_kb(),
            "wall_s": wall,
            "ticks": ticks,
            "note": "in-process Worker, database scheduler, SQLite file (WAL)",
        }


def peer_peak(n: int, persistence: bool) -> dict[str, Any]:
    """django-hookflow: one n-step run through its in-process harness."""
    sys.path.insert(0, str(HERE / "peers"))
    import django_hookflow_harness as harness

    harness.run_django_hookflow(2, persistence=persistence)  # configures Django, warms up
    gc.collect()
    baseline_rss = _rss_kb()
    baseline_max = _maxrss_kb()
    stats = harness.run_django_hookflow(n, persistence=persistence)
    return {
        "engine": "django-hookflow",
        "n": n,
        "persistence": persistence,
        "baseline_rss_kb": baseline_rss,
        "baseline_maxrss_kb": baseline_max,
        "peak_rss_kb": _maxrss_kb(),
        "end_rss_kb": _rss_kb(),
        "wall_s": stats.wall_s,
        "note": "in-process harness (captured publishes, test-client deliveries)",
    }


def _slope_per_100(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of value against runs, per 100 runs."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx * 100 if sxx else 0.0


def leak(runs: int, every: int, warm_runs: int | None, steps_per_run: int = 10) -> dict[str, Any]:
    """One worker, ``runs`` consecutive runs; RSS and traced memory every ``every`` runs."""
    import tracemalloc

    with tempfile.TemporaryDirectory(prefix="hookflow_leak_") as tmp:
        _setup_bench_django(Path(tmp) / "leak.sqlite3")
        from bench_app.workflows import Steps, steps
        from hookflow_gen._client import use_runtime
        from hookflow_gen.django.management.commands.hookflow import Worker

        runtime = _runtime(warm_runs)
        worker = Worker(runtime, poll_interval=0.01)

        def one_run() -> None:
            handle = steps.start(Steps(n=steps_per_run))
            worker.run(until_idle=0)
            if handle.status.value != "completed":
                raise RuntimeError(f"run {handle.run_id} ended {handle.status.value}")

        samples: list[dict[str, float]] = []
        with use_runtime(runtime):
            for _ in range(every):  # warm-up batch: fills import-time caches
                one_run()
            tracemalloc.start()
            started = time.perf_counter()
            for done in range(runs + 1):
                if done % every == 0:
                    gc.collect()
                    current, _peak = tracemalloc.get_traced_memory()
                    samples.append({"runs": done, "rss_kb": _rss_kb(), "traced_kb": current / 1024})
                if done < runs:
                    one_run()
            wall = time.perf_counter() - started
            tracemalloc.stop()
        rss = [(int(s["runs"]), s["rss_kb"]) for s in samples]
        traced = [(int(s["runs"]), s["traced_kb"]) for s in samples]
        return {
            "engine": "hookflow_gen",
            "runs": runs,
            "steps_per_run": steps_per_run,
            "every": every,
            "warm_runs": runtime._warm.size,
            "live_generators_at_end": len(runtime._warm),
            "samples": samples,
            "rss_first_kb": rss[0][1],
            "rss_last_kb": rss[-1][1],
            "rss_slope_kb_per_100": _slope_per_100(rss),
            "traced_first_kb": traced[0][1],
            "traced_last_kb": traced[-1][1],
            "traced_slope_kb_per_100": _slope_per_100(traced),
            "traced_slope_second_half_kb_per_100": _slope_per_100(traced[len(traced) // 2 :]),
            "wall_s": wall,
            "note": "one Worker, database scheduler, SQLite file; tracemalloc on while sampling",
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=["peak", "peer-peak", "leak"])
    parser.add_argument("--n", type=int, default=10_000, help="steps of the peak run")
    parser.add_argument("--persistence", action="store_true", help="peer-peak: persistence on")
    parser.add_argument("--runs", type=int, default=1000, help="leak: consecutive runs")
    parser.add_argument("--every", type=int, default=100, help="leak: sample every N runs")
    parser.add_argument("--warm-runs", type=int, default=None, help="leak: WARM_RUNS override")
    args = parser.parse_args(argv)
    if args.mode == "peak":
        out = peak(args.n)
    elif args.mode == "peer-peak":
        out = peer_peak(args.n, args.persistence)
    else:
        out = leak(args.runs, args.every, args.warm_runs)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
