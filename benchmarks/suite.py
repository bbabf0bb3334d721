# ruff: noqa: E501, RUF005  (long Markdown table rows read better unwrapped)
"""hookflow_gen next to its peers, in the same run on the same machine: one command.

Run::

    uv run --group bench python benchmarks/suite.py [--quick]

Every measurement runs in its own subprocess (each configures Django its own
way) and hands back JSON; this script prints one Markdown report of figures,
ratios and target verdicts and writes ``benchmarks/results/results.md``,
``results.json`` and ``time_per_run.png`` (time per run against n, log-log).

What is measured, and how
-------------------------
1. Messages and bytes per run, and 2. end-to-end wall time per run: the
   product through ``hookflow_gen_harness.py`` (qstash scheduler, captured
   publishes, in-process deliveries through Django's test client, genuine
   QStash signatures verified) and django-hookflow 0.0.4 through
   ``peers/django_hookflow_harness.py`` (the same design; its signature check
   is fed the hex-digest tokens it expects, since it rejects genuine QStash
   tokens). Sleeps are virtual time in both. django-hookflow runs with its
   persistence off (its default) and on; hookflow_gen always persists its
   journal, so the like-for-like comparison is against persistence on. The
   median of several runs per n; growth fitted with ``_stats.fit_growth``.
2b. (full mode) ``qstash_messages.py``: the product over real HTTP with the
   local QStash server, as a cross-check of the message counts.
3. Replay cost per step: ``replay.measure`` (the engine's replay of an n-step
   journal next to its send + validate floor) and Azure Durable Functions'
   ``replay_azure`` (its own ``Orchestrator.create`` entry point on the
   context JSON), interleaved in one process. Azure is given in two history
   layouts: ``compact`` (2 events per activity; reproduces the published
   ~130 us/step and is the conservative one used for the headline ratio) and
   ``episodes`` (4 events per activity, as the host records it). The
   whole-life replay cost of an Azure orchestration (sum over its wake-ups)
   is measured at n=100 and extrapolated from a fitted line above that.
4. Durable steps of every engine (hookflow_gen, DBOS Transact, any extra
   peer) next to two floors (INSERT+COMMIT; BEGIN, SELECT ... FOR UPDATE,
   INSERT, COMMIT) on SQLite and PostgreSQL, in interleaved rounds with
   per-round ratios, counts of statements, commits and round trips per step,
   and the cold replay with its journal load next to Azure DF's replay:
   ``interleaved.py`` (which see). ``--scale`` sizes its shapes (1 = the
   full 1,000 x 10, 1 x 1,000 and 1 x 10,000); ``--peer`` adds an engine.
5. Memory: ``memory.py peak`` (a 10,000-step run; peak and baseline RSS),
   ``memory.py peer-peak`` (django-hookflow at n=1,000), and ``memory.py
   leak`` (one worker, 1,000 consecutive 10-step runs, default WARM_RUNS and
   WARM_RUNS=0).

Targets are reported, not tuned to.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

for _extra in (str(HERE), str(HERE / "peers")):
    if _extra not in sys.path:
        sys.path.insert(0, _extra)

Json = dict[str, Any]

# --------------------------------------------------------------------------- children


def _median_runs(runs: list[Any]) -> list[Json]:
    """Group PeerRunStats by n; keep the median wall run's figures plus all walls."""
    from _stats import to_json_dict

    by_n: dict[int, list[Any]] = {}
    for r in runs:
        by_n.setdefault(r.n, []).append(r)
    out: list[Json] = []
    for _n, group in sorted(by_n.items()):
        walls = sorted(r.wall_s for r in group)
        median = sorted(group, key=lambda r: r.wall_s)[len(group) // 2]
        d = to_json_dict(median)
        sizes: list[int] = list(d.pop("message_bytes"))  # type: ignore[arg-type]
        d["first_message_bytes"] = sizes[0]
        d["mean_message_bytes"] = sum(sizes) / len(sizes)
        d["walls_s"] = walls
        d["wall_s"] = statistics.median(walls)
        d["handler_s_median"] = d["handler_s"]
        out.append(d)
    return out


def child_e2e(engine: str, ns: list[int], mixed: bool, persistence: bool, repeats: int) -> Json:
    """Run one engine's harness; ``repeats`` per n below 1,000, fewer above."""

    def times(n: int) -> int:
        if n >= 10_000:
            return 1
        if n >= 1_000:
            if engine == "hookflow_gen":
                return 3
            return 1 if persistence else max(1, repeats // 2)
        return repeats

    runs: list[Any] = []
    if engine == "hookflow_gen":
        import hookflow_gen_harness as h

        h.run_hookflow_gen(2, mixed=mixed)  # warm-up
        for n in ns:
            runs += [h.run_hookflow_gen(n, mixed=mixed) for _ in range(times(n))]
    else:
        import django_hookflow_harness as p

        p.run_django_hookflow(2, mixed=mixed, persistence=persistence)  # warm-up
        for n in ns:
            runs += [
                p.run_django_hookflow(n, mixed=mixed, persistence=persistence)
                for _ in range(times(n))
            ]
    from _stats import fit_growth, to_json_dict

    rows = _median_runs(runs)
    growth = (
        to_json_dict(fit_growth([(r["n"], r["wall_s"]) for r in rows])) if len(rows) > 1 else None
    )
    return {
        "engine": engine,
        "mixed": mixed,
        "persistence": persistence if engine == "django-hookflow" else True,
        "rows": rows,
        "growth": growth,
    }


def child_replay(ns: list[int], azure_max_n: int, episodes_max_n: int) -> Json:
    """hookflow_gen's replay and Azure DF's, per n, interleaved in one process."""
    import azure_df_replay as az
    from _stats import fit_growth, to_json_dict

    import replay as hg

    rows: list[Json] = []
    for n in ns:
        rounds = [hg.measure(n, 7 if n <= 1000 else 3) for _ in range(3)]
        floor = min(r["floor_us"] for r in rounds)
        engine = min(r["replay_us"] for r in rounds)
        row: Json = {"n": n, "floor_us": floor, "replay_us": engine, "floor_ratio": engine / floor}
        row["floor_ratio_median_round"] = statistics.median(r["ratio"] for r in rounds)
        if n <= azure_max_n:
            compact = az.replay_azure(n, 3 if n <= 1000 else 2, layout="compact")
            row["azure_compact_us"] = compact.us_per_step
            row["azure_compact_history_bytes"] = compact.history_json_bytes
        if n <= episodes_max_n:
            episodes = az.replay_azure(n, 3 if n <= 1000 else 2, layout="episodes")
            row["azure_episodes_us"] = episodes.us_per_step
        rows.append(row)
    wholes: list[Json] = []
    for layout in ("compact", "episodes"):
        for n in (100, 1000, 10_000):
            w = az.whole_orchestration_cost(n, budget_s=5.0, layout=layout)  # type: ignore[arg-type]
            wholes.append(to_json_dict(w))
    growth = to_json_dict(fit_growth([(r["n"], r["replay_us"] * r["n"]) for r in rows]))
    return {"rows": rows, "whole_orchestration": wholes, "hookflow_gen_replay_growth": growth}


def child_interleaved(scale: float, rounds: int, floor_rows: int, peers: list[str]) -> Json:
    import interleaved

    return interleaved.collect(
        scale=scale, rounds=rounds, floor_rows=floor_rows, peers=tuple(peers)
    )


CHILDREN = {"e2e", "replay", "interleaved"}

#: Extra peers of the interleaved step benchmark, run whenever the suite runs:
#: module names (on ``benchmarks/`` or ``benchmarks/peers/``) that define
#: ``make_engine(db, target)`` as described in ``step_server.py``. ``--peer``
#: adds one for a single run.
OPTIONAL_PEERS: tuple[str, ...] = ()


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=sorted(CHILDREN), required=True)
    parser.add_argument("--engine", default="hookflow_gen")
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--mixed", action="store_true")
    parser.add_argument("--persistence", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--azure-max-n", type=int, default=10_000)
    parser.add_argument("--episodes-max-n", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--floor-rows", type=int, default=1000)
    parser.add_argument("--peer", action="append", default=[])
    args = parser.parse_args(argv)
    if args.child == "interleaved":
        out = child_interleaved(args.scale, args.rounds, args.floor_rows, args.peer)
    elif args.child == "e2e":
        out = child_e2e(args.engine, args.n, args.mixed, args.persistence, args.repeats)
    else:
        out = child_replay(args.n, args.azure_max_n, args.episodes_max_n)
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- running children


def _run(label: str, command: list[str], *, timeout: float = 600) -> tuple[str, float]:
    """Run one measurement process; its stdout and wall time. Progress on stderr."""
    print(f"[suite] {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError(f"{label} failed with status {done.returncode}")
    print(f"[suite] {label}: {elapsed:.1f} s", file=sys.stderr, flush=True)
    return done.stdout, elapsed


def _json_child(label: str, args: list[str], timeout: float = 600) -> tuple[Json, float]:
    out, elapsed = _run(label, [sys.executable, str(HERE / "suite.py"), *args], timeout=timeout)
    return json.loads(out.strip().splitlines()[-1]), elapsed


def _script(label: str, script: str, args: list[str], timeout: float = 600) -> tuple[str, float]:
    return _run(label, [sys.executable, str(HERE / script), *args], timeout=timeout)


def collect(quick: bool, scale: float, rounds: int, peers: list[str]) -> Json:
    """Every measurement, one subprocess each, in sequence (2 shared cores)."""
    ns_hg = [10, 100, 1000, 10_000]
    ns_peer = [10, 100, 1000]
    repeats = 3 if quick else 5
    data: Json = {"quick": quick, "timings_s": {}}
    t = data["timings_s"]

    e2e: list[Json] = []
    plan: list[tuple[str, list[str]]] = [
        ("e2e hookflow_gen steps", ["--engine", "hookflow_gen", "--n", *map(str, ns_hg)]),
        (
            "e2e hookflow_gen mixed",
            ["--engine", "hookflow_gen", "--mixed", "--n", *map(str, ns_hg)],
        ),
        ("e2e django-hookflow steps", ["--engine", "django-hookflow", "--n", *map(str, ns_peer)]),
        (
            "e2e django-hookflow steps +persistence",
            ["--engine", "django-hookflow", "--persistence", "--n", *map(str, ns_peer)],
        ),
        (
            "e2e django-hookflow mixed",
            ["--engine", "django-hookflow", "--mixed", "--n", *map(str, ns_peer)],
        ),
    ]
    if not quick:
        plan.append(
            (
                "e2e django-hookflow mixed +persistence",
                ["--engine", "django-hookflow", "--mixed", "--persistence", "--n", "10", "100"],
            )
        )
    for label, args in plan:
        doc, t[label] = _json_child(label, ["--child", "e2e", "--repeats", str(repeats), *args])
        e2e.append(doc)
    data["e2e"] = e2e

    replay_args = ["--child", "replay", "--n", *map(str, [10, 100, 1000, 10_000])]
    replay_args += ["--episodes-max-n", "1000" if quick else "10000"]
    data["replay"], t["replay"] = _json_child("replay (hookflow_gen + Azure DF)", replay_args)

    steps_args = ["--child", "interleaved", "--scale", str(scale), "--rounds", str(rounds)]
    steps_args += ["--floor-rows", "200" if quick else "300"]
    for peer in (*OPTIONAL_PEERS, *peers):
        steps_args += ["--peer", peer]
    data["steps"], t["durable steps, interleaved"] = _json_child(
        "durable steps, interleaved rounds (interleaved.py)", steps_args, timeout=3600
    )

    memory: Json = {}
    out, t["memory peak"] = _script("memory peak n=10000", "memory.py", ["peak", "--n", "10000"])
    memory["peak"] = json.loads(out)
    out, t["memory peer-peak"] = _script(
        "memory django-hookflow n=1000", "memory.py", ["peer-peak", "--n", "1000"]
    )
    memory["peer_peak"] = json.loads(out)
    leak_runs = "1000"
    out, t["memory leak default"] = _script(
        "memory leak (WARM_RUNS default)", "memory.py", ["leak", "--runs", leak_runs]
    )
    memory["leak_default"] = json.loads(out)
    out, t["memory leak warm0"] = _script(
        "memory leak (WARM_RUNS=0)", "memory.py", ["leak", "--runs", leak_runs, "--warm-runs", "0"]
    )
    memory["leak_warm0"] = json.loads(out)
    data["memory"] = memory

    if not quick:
        try:
            out, t["real http cross-check"] = _script(
                "real-HTTP cross-check (qstash_messages.py)", "qstash_messages.py", ["--runs", "1"]
            )
            data["real_http_table"] = out.strip()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            data["real_http_table"] = f"(not available: {exc})"
    # Upstash Workflow for Python through the local QStash server, interleaved
    # with hookflow_gen: n = 1,000 takes minutes, so it runs once.
    upstash_args = ["--rounds", "1" if quick else "3", "--n", "10", "100"]
    if not quick:
        upstash_args.append("1000")
    try:
        out, t["upstash workflow"] = _script(
            "Upstash Workflow end to end (upstash_workflow_peer.py)",
            "upstash_workflow_peer.py",
            upstash_args,
            timeout=1800,
        )
        data["upstash_workflow_table"] = out.strip()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        data["upstash_workflow_table"] = f"(not available: {exc})"
    return data


# --------------------------------------------------------------------------- report


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def _header(add: Callable[[str], None], columns: list[str], left: str = "l") -> None:
    """A Markdown table header; the first ``len(left)`` columns left-aligned, the rest right."""
    add("| " + " | ".join(columns) + " |")
    add("|" + "|".join("---" if i < len(left) else "---:" for i in range(len(columns))) + "|")


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _e2e(data: Json, engine: str, mixed: bool, persistence: bool | None = None) -> Json | None:
    for doc in data["e2e"]:
        same = doc["engine"] == engine and doc["mixed"] == mixed
        if same and (persistence is None or doc["persistence"] == persistence):
            return doc
    return None


def _row(doc: Json | None, n: int) -> Json | None:
    if doc is None:
        return None
    return next((r for r in doc["rows"] if r["n"] == n), None)


def _peer_extrapolation(doc: Json, n: int) -> float | None:
    """Wall at n from the largest measured n and the fitted tail slope."""
    if not doc.get("growth") or len(doc["rows"]) < 3:
        return None  # a two-point fit of small n says little about large n
    last = doc["rows"][-1]
    return float(last["wall_s"]) * (n / last["n"]) ** float(doc["growth"]["tail_slope"])


def report(data: Json) -> tuple[str, list[tuple[str, str, str]]]:
    """The Markdown report, and the target verdicts (target, standing, verdict)."""
    lines: list[str] = []
    verdicts: list[tuple[str, str, str]] = []
    add = lines.append
    meta = data["meta"]
    add("# hookflow_gen next to its peers")
    add("")
    add(
        f"Run {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs), Python "
        f"{meta['python']}; peers: django-hookflow {meta['django_hookflow']}, "
        f"azure-functions-durable {meta['azure_df']}. Mode: {'quick' if data['quick'] else 'full'}; "
        f"suite wall time {meta['wall_s']:.0f} s. Command: `{meta['command']}`."
    )
    add("")

    # ---- 1. messages and bytes
    add("## 1. QStash messages and bytes per run")
    add("")
    add(
        "Same harness design for both engines: publishes captured, each message delivered "
        "in-process through Django's test client; body bytes as the real client sends them. "
        "hookflow_gen: genuine QStash signatures, verified. django-hookflow: hex-digest tokens "
        "(it rejects genuine QStash tokens). `mixed` = a 1 s sleep after every 10th step "
        "(virtual time)."
    )
    add("")
    _header(
        add,
        ["engine", "workflow", "n", "messages/run", "target", "bytes/message (mean)"]
        + ["first / last message B", "bytes/run"],
        "ll",
    )
    msg_ok = True
    bytes_per_msg: list[float] = []
    for engine, persistence in (("hookflow_gen", None), ("django-hookflow", False)):
        for mixed in (False, True):
            doc = _e2e(data, engine, mixed, persistence)
            if doc is None:
                continue
            for r in doc["rows"]:
                target = 1 + (r["n"] // 10 if mixed else 0)
                tgt = f"{target:,}" if engine == "hookflow_gen" else "-"
                if engine == "hookflow_gen":
                    msg_ok &= r["messages"] == target
                    bytes_per_msg.append(r["mean_message_bytes"])
                add(
                    f"| {engine} | {'mixed' if mixed else 'steps'} | {r['n']:,} | {r['messages']:,} "
                    f"| {tgt} | {r['mean_message_bytes']:,.0f} | {r['first_message_bytes']:,} / "
                    f"{r['last_message_bytes']:,} | {r['total_bytes']:,} |"
                )
    spread = (max(bytes_per_msg) - min(bytes_per_msg)) / min(bytes_per_msg) if bytes_per_msg else 0
    add("")
    verdicts.append(
        (
            "messages per run = 1 + sleeps (hookflow_gen)",
            "exact at every n" if msg_ok else "differs",
            _verdict(msg_ok),
        )
    )
    const_ok = spread <= 0.1
    verdicts.append(
        (
            "bytes per message constant in n",
            f"{min(bytes_per_msg):.0f}-{max(bytes_per_msg):.0f} B across n (only the digits of seq vary)",
            _verdict(const_ok),
        )
    )
    real = data.get("real_http_table")
    if real:
        add("Cross-check, hookflow_gen over real HTTP with the local QStash server (`qstash_messages.py --runs 1`; "
            "real 1 s sleeps, threaded dev server):")  # fmt: skip
        add("")
        add(real)
        add("")

    upstash = data.get("upstash_workflow_table")
    if upstash:
        add("Upstash Workflow for Python (`upstash-workflow` 2.0) next to hookflow_gen, both "
            "through the local QStash server over real HTTP, interleaved "
            "(`upstash_workflow_peer.py`):")  # fmt: skip
        add("")
        add(upstash)
        add("")

    # ---- 2. end to end
    add("## 2. End-to-end wall time per run (same harness)")
    add("")
    add(
        "Median wall time per run in ms, trigger to last delivery, harness included (signing, "
        "test-client requests). Ratio = django-hookflow / hookflow_gen. hookflow_gen always "
        "persists its journal (SQLite file, WAL); **apples-to-apples is django-hookflow with "
        "persistence on** (in-memory SQLite, which favours it); persistence off is its default."
    )
    add("")
    for mixed in (False, True):
        hg = _e2e(data, "hookflow_gen", mixed)
        off = _e2e(data, "django-hookflow", mixed, False)
        on = _e2e(data, "django-hookflow", mixed, True)
        if hg is None:
            continue
        add(f"**{'mixed (sleep every 10 steps)' if mixed else 'run steps only'}**")
        add("")
        _header(
            add,
            ["n", "hookflow_gen ms", "ms/step", "django-hookflow (persistence off) ms", "ratio"]
            + ["django-hookflow (persistence on) ms", "ratio"],
        )
        for r in hg["rows"]:
            n = r["n"]
            cells = [f"{n:,}", _fmt_ms(r["wall_s"]), f"{r['wall_s'] / n * 1000:.3f}"]
            for peer in (off, on):
                pr = _row(peer, n)
                if pr is not None:
                    cells += [_fmt_ms(pr["wall_s"]), f"{pr['wall_s'] / r['wall_s']:.1f}x"]
                elif peer is not None and n > peer["rows"][-1]["n"]:
                    est = _peer_extrapolation(peer, n)
                    cells += [f"not run (~{est:,.0f} s extrapolated)" if est else "not run", "-"]
                else:
                    cells += ["-", "-"]
            add("| " + " | ".join(cells) + " |")
        add("")
        growth_bits = []
        for name, doc in (
            ("hookflow_gen", hg),
            ("django-hookflow off", off),
            ("django-hookflow on", on),
        ):
            if doc is not None and doc.get("growth"):
                g = doc["growth"]
                growth_bits.append(
                    f"{name}: slope {g['slope']:.2f}, tail slope {g['tail_slope']:.2f} ({g['classification']})"
                )
        add("Growth of wall time in n (log-log fit): " + "; ".join(growth_bits) + ".")
        add("")
        if not mixed:
            for n, need in ((100, 10.0), (1000, 40.0)):
                r = _row(hg, n)
                ratios = []
                for label, peer in (("persistence on", on), ("persistence off", off)):
                    pr = _row(peer, n)
                    if r is not None and pr is not None:
                        ratios.append((label, pr["wall_s"] / r["wall_s"]))
                if ratios:
                    standing = ", ".join(f"{x:.1f}x vs {label}" for label, x in ratios)
                    verdicts.append(
                        (
                            f"end to end >= {need:.0f}x faster than django-hookflow at n={n:,}",
                            standing,
                            " / ".join(f"{_verdict(x >= need)} ({label})" for label, x in ratios),
                        )
                    )
            g = hg.get("growth") or {}
            verdicts.append(
                (
                    "hookflow_gen end to end linear in n",
                    f"tail slope {g.get('tail_slope', 0):.2f} ({g.get('classification', '?')})",
                    _verdict(g.get("classification") in ("linear", "sublinear")),
                )
            )

    # ---- 3. replay
    rp = data["replay"]
    add("## 3. Replay cost per replayed step")
    add("")
    add(
        "hookflow_gen: `Replay(...).advance()` of an n-step journal of small pydantic results, "
        "best of 3 rounds; floor = `generator.send` + `TypeAdapter.validate_json` of the same "
        "model. Azure DF: `Orchestrator.create(orch)(context_json)` (parse + replay + reply), "
        "best of 2-3; `compact` = 2 history events per activity (matches the published "
        "~130 us/step; used for the headline ratio, conservative), `episodes` = 4 per activity "
        "as the host records it. Worker side only for Azure (host storage/IPC not included)."
    )
    add("")
    _header(
        add,
        ["n", "floor us/step", "hookflow_gen us/step", "vs floor", "Azure compact us/step"]
        + ["ratio", "Azure episodes us/step", "ratio"],
    )
    for r in rp["rows"]:
        cells = [
            f"{r['n']:,}",
            f"{r['floor_us']:.2f}",
            f"{r['replay_us']:.2f}",
            f"{r['floor_ratio']:.2f}x",
        ]
        for key in ("azure_compact_us", "azure_episodes_us"):
            if key in r:
                cells += [f"{r[key]:.1f}", f"{r[key] / r['replay_us']:.0f}x"]
            else:
                cells += ["-", "-"]
        add("| " + " | ".join(cells) + " |")
    add("")
    big = [r for r in rp["rows"] if r["n"] >= 100]
    worst_az = min(r["azure_compact_us"] / r["replay_us"] for r in big if "azure_compact_us" in r)
    worst_floor = max(r["floor_ratio"] for r in big)
    all_floor = max(r["floor_ratio"] for r in rp["rows"])
    verdicts.append(
        (
            ">= 40x faster per replayed step than Azure DF (compact layout)",
            f"worst {worst_az:.0f}x over n >= 100 (n=10: "
            f"{rp['rows'][0].get('azure_compact_us', 0) / rp['rows'][0]['replay_us']:.0f}x)",
            _verdict(worst_az >= 40),
        )
    )
    verdicts.append(
        (
            "replay within 4x of send+validate floor",
            f"worst {worst_floor:.2f}x over n >= 100; {all_floor:.2f}x over all n",
            _verdict(worst_floor <= 4),
        )
    )
    add("Whole-life replay cost of an Azure DF orchestration (one wake-up per completed activity, "
        "each replaying the history so far; hookflow_gen keeps the generator warm and does not "
        "replay on the normal path):")  # fmt: skip
    add("")
    add("| layout | n | total s | method |")
    add("|---|---:|---:|---|")
    for w in rp["whole_orchestration"]:
        layout = "compact" if "compact" in w["notes"][0] else "episodes"
        add(f"| {layout} | {w['n']:,} | {w['total_s']:,.2f} | {w['method']} |")
    add("")

    # ---- 4. durable steps, interleaved
    import interleaved

    add("## 4. Durable steps next to DBOS Transact and both floors, interleaved rounds")
    add("")
    if data["steps"]["scale"] != 1.0:
        add("The full shapes (1,000 x 10, 1 x 1,000, 1 x 10,000) take about 4 min on SQLite (5 "
            "rounds) and 7 min on PostgreSQL (3 rounds) here: `benchmarks/interleaved.py`, recorded in "
            "`results/interleaved_full_sqlite.md` and `results/interleaved_full_postgres.md`.")  # fmt: skip
        add("")
    steps_lines, steps_verdicts = interleaved.report(data["steps"])
    lines.extend(steps_lines)
    verdicts.extend(steps_verdicts)
    add("")

    # ---- 5. memory
    mem = data["memory"]
    add("## 5. Memory")
    add("")
    _header(
        add,
        ["engine", "run", "baseline RSS MB (after setup)", "peak RSS MB", "peak - baseline MB"]
        + ["wall s"],
        "ll",
    )
    for key in ("peak", "peer_peak"):
        m = mem[key]
        label = f"{m['n']:,} steps"
        add(
            f"| {m['engine']} | {label} | {m['baseline_rss_kb'] / 1024:.1f} | {m['peak_rss_kb'] / 1024:.1f} "
            f"| {(m['peak_rss_kb'] - m['baseline_rss_kb']) / 1024:.1f} | {m['wall_s']:.2f} |"
        )
    add("")
    pk = mem["peak"]
    verdicts.append(
        (
            "10,000-step run: peak RSS < 100 MB",
            f"{pk['peak_rss_kb'] / 1024:.1f} MB peak ({pk['baseline_rss_kb'] / 1024:.1f} MB after setup)",
            _verdict(pk["peak_rss_kb"] < 100 * 1024),
        )
    )
    add(
        "One worker, consecutive 10-step runs; RSS (psutil) and tracemalloc current size every "
        "100 runs after `gc.collect()`; slope by least squares, KB per 100 runs."
    )
    add("")
    _header(
        add,
        ["WARM_RUNS", "runs", "RSS first -> last MB", "RSS slope KB/100"]
        + ["traced first -> last KB", "traced slope KB/100 (all / 2nd half)"]
        + ["live generators at end"],
    )
    flat_all = True
    for key in ("leak_default", "leak_warm0"):
        m = mem[key]
        add(
            f"| {m['warm_runs']} | {m['runs']:,} | {m['rss_first_kb'] / 1024:.1f} -> {m['rss_last_kb'] / 1024:.1f} "
            f"| {m['rss_slope_kb_per_100']:.0f} | {m['traced_first_kb']:.0f} -> {m['traced_last_kb']:.0f} "
            f"| {m['traced_slope_kb_per_100']:.1f} / {m['traced_slope_second_half_kb_per_100']:.1f} "
            f"| {m['live_generators_at_end']} |"
        )
        flat_all &= abs(m["traced_slope_second_half_kb_per_100"]) < 32
    add("")
    d0 = mem["leak_default"]
    add(
        f"With the default WARM_RUNS={d0['warm_runs']} the runtime holds "
        f"{d0['live_generators_at_end']} live generators at the end: it keeps waiting runs "
        "warm (so their next wake-up skips the replay) and drops a run's generator when the "
        "run finishes; at most WARM_RUNS are ever kept."
    )
    add("")
    verdicts.append(
        (
            "worker memory flat across 1,000 consecutive runs",
            "; ".join(
                f"WARM_RUNS={mem[k]['warm_runs']}: traced 2nd-half slope "
                f"{mem[k]['traced_slope_second_half_kb_per_100']:.1f} KB/100 runs"
                for k in ("leak_default", "leak_warm0")
            ),
            _verdict(flat_all),
        )
    )

    # ---- targets
    add("## Targets")
    add("")
    add("| target | where it stands | verdict |")
    add("|---|---|---|")
    for target, standing, verdict in verdicts:
        add(f"| {target} | {standing} | {verdict} |")
    add("")
    add("Per-measurement process wall times (s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in data["timings_s"].items()
    ) + ".")  # fmt: skip
    add("")
    return "\n".join(lines), verdicts


def plot(data: Json, path: Path) -> None:
    """Time per run against n, log-log, one line per engine/configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    series = [
        ("hookflow_gen, steps", "hookflow_gen", False, None, "o-", "tab:blue"),
        ("hookflow_gen, mixed", "hookflow_gen", True, None, "o--", "tab:blue"),
        (
            "django-hookflow, steps (persistence off)",
            "django-hookflow",
            False,
            False,
            "s-",
            "tab:red",
        ),
        (
            "django-hookflow, steps (persistence on)",
            "django-hookflow",
            False,
            True,
            "s-",
            "tab:orange",
        ),
        (
            "django-hookflow, mixed (persistence off)",
            "django-hookflow",
            True,
            False,
            "s--",
            "tab:red",
        ),
    ]
    for label, engine, mixed, persistence, style, color in series:
        doc = _e2e(data, engine, mixed, persistence)
        if doc is None:
            continue
        xs = [r["n"] for r in doc["rows"]]
        ys = [r["wall_s"] for r in doc["rows"]]
        ax.plot(xs, ys, style, color=color, label=label)
    for layout, color in (("compact", "tab:green"), ("episodes", "tab:olive")):
        whole = [w for w in data["replay"]["whole_orchestration"] if layout in w["notes"][0]]
        xs = [w["n"] for w in whole]
        ys = [w["total_s"] for w in whole]
        ax.plot(xs, ys, ":", color=color, label=f"Azure DF whole-life replay only ({layout})")
        for w in whole:
            filled = w["method"] == "measured"
            ax.plot(
                [w["n"]], [w["total_s"]], "^", color=color,
                markerfacecolor=color if filled else "none",
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("steps per run (n)")
    ax.set_ylabel("wall time per run (s)")
    ax.set_title("Time per run against n (Azure: hollow = extrapolated)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _versions() -> tuple[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("django-hookflow", "azure-functions-durable"):
        try:
            out.append(version(name))
        except PackageNotFoundError:
            out.append("?")
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return child_main(argv)
    parser = argparse.ArgumentParser(description="hookflow_gen next to its peers: one command.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and runs (~2 min)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--scale",
        type=float,
        help="size of the interleaved step shapes (1 = full; default 0.1, --quick 0.02)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 5)")
    parser.add_argument("--peer", action="append", default=[], help="an extra step-engine peer")
    args = parser.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.02 if args.quick else 0.1)
    started = time.perf_counter()
    data = collect(args.quick, scale, args.rounds, args.peer)
    dh, az = _versions()
    data["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django_hookflow": dh,
        "azure_df": az,
        "wall_s": time.perf_counter() - started,
        "command": "uv run --group bench python benchmarks/suite.py" + " ".join(["", *argv]),
    }
    text, verdicts = report(data)
    data["verdicts"] = [{"target": t, "standing": s, "verdict": v} for t, s, v in verdicts]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, args.out / "time_per_run.png")
    print(text)
    print(f"\nwritten: {args.out / 'results.md'}, results.json, time_per_run.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
