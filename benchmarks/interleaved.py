# ruff: noqa: E501  (long Markdown table rows read better unwrapped)
"""Durable steps of every engine next to both floors, in interleaved rounds.

The machine is shared: other processes come and go while a benchmark runs.
So nothing here is measured once, one engine after another. Each engine
(and each floor) runs in its own long-lived ``step_server.py`` process on its
own database, and the rounds go A, B, C, D, A, B, C, D ... over every shape:
in each round every engine runs every shape once, in an order rotated from
round to round. Ratios are taken *within* a round (an engine against the
floors measured in the same round, next to it), and reported as the median
and the range over the rounds, so load from elsewhere hits both sides of a
ratio alike.

Engines: ``hookflow_gen``; DBOS Transact (``peers/dbos_peer.py``); any extra
peer named with ``--peer`` (a module with ``make_engine(db, target)``, see
``step_server.py``); floors ``floor`` (INSERT+COMMIT) and ``floor-durable``
(BEGIN; SELECT ... FOR UPDATE; INSERT; COMMIT).

Shapes (full): 1,000 runs of 10 trivial steps; one 1,000-step run; one
10,000-step run. ``--scale 0.1`` divides the runs and the long runs' steps
by ten for a quick look. The floors run ``--floor-rows`` transactions next to
every shape in every round.

Counts per step (``_probe.py``), from one extra traced, untimed pass per
engine: statements, transaction control, commits, round trips.

Cold replay: hookflow_gen loading an n-step journal from each database and
replaying it, next to Azure Durable Functions' replay of the same n
(``peers/azure_df_replay.py``: parsing its history JSON and replaying),
interleaved in rounds too.

Run: ``uv run --group bench python benchmarks/interleaved.py [--scale 0.1] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _extra in (str(HERE), str(HERE / "peers")):
    if _extra not in sys.path:
        sys.path.insert(0, _extra)

Json = dict[str, Any]

FLOORS = ("floor", "floor-durable")
ENGINES = ("hookflow_gen", "dbos")
DBS = ("sqlite", "postgres")
FULL_SHAPES = ((1000, 10), (1, 1000), (1, 10_000))
COLD_NS = (10, 100, 1000, 10_000)
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
LABELS = {
    "floor": "floor: INSERT+COMMIT",
    "floor-durable": "floor: BEGIN; SELECT FOR UPDATE; INSERT; COMMIT",
    "hookflow_gen": "hookflow_gen",
    "dbos": "DBOS Transact",
}


def shapes_for(scale: float) -> list[tuple[int, int]]:
    out = []
    for runs, steps in FULL_SHAPES:
        if runs > 1:
            out.append((max(1, round(runs * scale)), steps))
        else:
            out.append((1, max(10, round(steps * scale))))
    return out


def shape_name(shape: tuple[int, int]) -> str:
    runs, steps = shape
    return f"{runs:,} x {steps:,}" if runs > 1 else f"1 x {steps:,}"


def spread(values: list[float]) -> Json:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": values,
    }


def fmt(s: Json, digits: int = 0, unit: str = "") -> str:
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])}{unit} [{f.format(s['min'])}-{f.format(s['max'])}]"


# --------------------------------------------------------------------------- servers


class Server:
    """One ``step_server.py`` process: an engine on a database."""

    def __init__(self, engine: str, db: str, target: str) -> None:
        self.engine, self.db, self.target = engine, db, target
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "step_server.py"), "--engine", engine, "--db", db,
             "--target", target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=HERE,
        )  # fmt: skip
        self._read()  # {"ready": true}

    def _read(self) -> Json:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(f"{self.engine} on {self.db} died:\n{tail}")
        answer: Json = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.engine} on {self.db}: {answer['error']}")
        return answer

    def ask(self, **command: Any) -> Json:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _pg(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


def _target(db: str, engine: str, workdir: Path) -> str:
    safe = re.sub(r"[^a-z0-9]+", "_", engine.lower())
    if db == "sqlite":
        return str(workdir / f"{safe}.sqlite3")
    name = f"hfbench_{os.getpid()}_{safe}"
    _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _pg(f"CREATE DATABASE {name}")
    return name


# --------------------------------------------------------------------------- collect


def collect(
    *, scale: float = 1.0, rounds: int = 5, floor_rows: int = 1000, peers: tuple[str, ...] = (),
    count_runs: int = 50, progress: bool = True, dbs: tuple[str, ...] = DBS,
) -> Json:  # fmt: skip
    """Every figure of the interleaved benchmark, as JSON."""
    engines = [*ENGINES, *peers]
    everyone = [*FLOORS, *engines]
    shapes = shapes_for(scale)
    started = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(
                f"[interleaved {time.perf_counter() - started:6.0f} s] {text}",
                file=sys.stderr,
                flush=True,
            )

    workdir = Path(tempfile.mkdtemp(prefix="hfbench-"))
    servers: dict[tuple[str, str], Server] = {}
    pg_names: list[str] = []
    data: Json = {
        "scale": scale, "rounds": rounds, "floor_rows": floor_rows, "engines": engines,
        "shapes": [list(s) for s in shapes], "times": {}, "counts": {}, "cold_replay": {},
        "dbs": list(dbs),
    }  # fmt: skip
    try:
        for db in dbs:
            for engine in everyone:
                target = _target(db, engine, workdir)
                if db == "postgres":
                    pg_names.append(target)
                say(f"start {engine} on {db}")
                servers[db, engine] = Server(engine, db, target)

        # Counts: one traced, untimed pass per engine and database.
        for db in dbs:
            for engine in everyone:
                server = servers[db, engine]
                plan = [(1, floor_rows)] if engine in FLOORS else [(count_runs, 10), (1, 1000)]
                for runs, steps in plan:
                    say(f"count {engine} on {db}, {runs} x {steps}")
                    answer = server.ask(op="count", runs=runs, steps=steps)
                    data["counts"].setdefault(db, {}).setdefault(engine, []).append(answer)
                server.ask(op="shape", runs=5, steps=10)  # warm-up

        # The interleaved rounds.
        times: Json = data["times"]
        for r in range(rounds):
            for db in dbs:
                for shape in shapes:
                    name = shape_name(shape)
                    order = everyone[r % len(everyone) :] + everyone[: r % len(everyone)]
                    for engine in order:
                        runs, steps = (1, floor_rows) if engine in FLOORS else shape
                        answer = servers[db, engine].ask(op="shape", runs=runs, steps=steps)
                        times.setdefault(db, {}).setdefault(name, {}).setdefault(engine, []).append(
                            answer["us_per_step"]
                        )
                    row = {e: times[db][name][e][-1] for e in everyone}
                    say(
                        f"round {r + 1}/{rounds} {db} {name}: "
                        + ", ".join(f"{e} {v:,.0f}" for e, v in row.items())
                        + " us/step"
                    )

        # Cold replay, interleaved with Azure DF's replay of the same n.
        import azure_df_replay as az

        cold: Json = data["cold_replay"]
        ns = [n for n in COLD_NS if n <= max(10, round(10_000 * max(scale, 0.1)))]
        for r in range(rounds):
            for n in ns:
                for db in dbs:
                    answer = servers[db, "hookflow_gen"].ask(op="cold_replay", n=n)
                    cell = cold.setdefault(str(n), {}).setdefault(
                        db, {"total_us": [], "load_us": [], "replay_us": []}
                    )
                    for key in cell:
                        cell[key].append(answer[key])
                azure = az.replay_azure(n, 3 if n <= 1000 else 1, layout="compact")
                cold[str(n)].setdefault("azure_compact_us", []).append(azure.us_per_step)
            say(f"cold replay round {r + 1}/{rounds}")
    finally:
        for server in servers.values():
            server.close()
        for name in pg_names:
            try:
                _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except Exception as exc:  # pragma: no cover - best effort
                print(f"could not drop {name}: {exc}", file=sys.stderr)
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    data["wall_s"] = time.perf_counter() - started
    summarize(data)
    return data


def summarize(data: Json) -> None:
    """Per-round ratios, as median [min-max], added to ``data``."""
    out: Json = {}
    for db, by_shape in data["times"].items():
        for name, by_engine in by_shape.items():
            cell: Json = {}
            floor, durable = by_engine["floor"], by_engine["floor-durable"]
            hg = by_engine["hookflow_gen"]
            for engine, values in by_engine.items():
                cell[engine] = {
                    "us": spread(values),
                    "vs_floor": spread([v / f for v, f in zip(values, floor, strict=True)]),
                    "vs_floor_durable": spread(
                        [v / f for v, f in zip(values, durable, strict=True)]
                    ),
                    "vs_hookflow_gen": spread([v / h for v, h in zip(values, hg, strict=True)]),
                }
            out.setdefault(db, {})[name] = cell
    data["summary"] = out
    cold: Json = {}
    for n, cell in data["cold_replay"].items():
        row: Json = {}
        for db in DBS:
            if db in cell:
                row[db] = {k: spread(v) for k, v in cell[db].items()}
        az = cell["azure_compact_us"]
        row["azure_compact_us"] = spread(az)
        for db in DBS:
            if db in cell:
                row[f"azure_vs_{db}"] = spread(
                    [a / t for a, t in zip(az, cell[db]["total_us"], strict=True)]
                )
        cold[n] = row
    data["cold_summary"] = cold


# --------------------------------------------------------------------------- report


def lean_writes() -> list[tuple[str, str]]:
    """What the models' indexes and the step writes do (migration 0011_lean_indexes)."""
    return [
        (
            "`Step.run`, `Update.run` (ForeignKey)",
            "no index of their own (`db_index=False`): the unique constraints (run, position) and (run, update_id) lead with `run_id` and serve every lookup by run",
        ),
        (
            "`Step.key`",
            "partial index `hookflow_step_key`, `WHERE key IS NOT NULL`: run/call/sleep steps (most rows) are left out; `waiters` filters on `key = %s`",
        ),
        (
            "`Run.parent_run_id`",
            "partial index `hookflow_run_parent`, `WHERE parent_run_id IS NOT NULL`: top-level runs are left out; the admin's children list filters on `parent_run_id = %s`",
        ),
        (
            "`varchar_pattern_ops` (`_like`) copies on PostgreSQL",
            "none left: text columns are indexed through `Meta.indexes`/`UniqueConstraint`, and the primary keys' copies are dropped by the migration; no query runs `LIKE 'x%'`",
        ),
        (
            "`Run.workflow`, `Run.created_at`, `hookflow_run_due` (partial on status='running')",
            "kept: the workflow filter, the run lists' order, the workers' poll",
        ),
        (
            "a run/call step row is written twice: its claim, then its outcome",
            "the two writes the lease needs, in two commits: the claim (with its lease) is committed before the function runs, "
            "so another worker sees the step taken, and the outcome after it. On the hot path each commit carries one step's outcome "
            "and the next step's claim (`write_guarded`), so a step costs one write statement; within one transaction a row is "
            "written once (`_Writes` keeps the last record per position)",
        ),
    ]


def report(data: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Markdown lines and verdicts (target, standing, verdict)."""
    lines: list[str] = []
    add = lines.append
    verdicts: list[tuple[str, str, str]] = []
    engines = data["engines"]
    everyone = [*FLOORS, *engines]
    summary = data["summary"]
    full = data["scale"] == 1.0
    add(
        f"{data['rounds']} interleaved rounds; in each, every engine and both floors run every shape once, "
        f"in an order rotated per round; each engine in its own process on its own database. Floors: "
        f"{data['floor_rows']:,} transactions next to every shape in every round, on the raw driver. "
        f"Ratios are per round (the engine against the floor of the same round), given as median [min-max]. "
        f"SQLite: WAL, synchronous=NORMAL, immediate transactions for every engine. "
        f"Scale {data['scale']:g}{'' if full else ' (NOT the full shapes)'}; {data['wall_s']:.0f} s."
    )
    add("")
    for db in data["dbs"]:
        for name, cell in summary[db].items():
            add(f"**{db}, {name} steps**")
            add("")
            add("| engine | us/step | / INSERT+COMMIT | / durable-shaped floor | / hookflow_gen |")
            add("|---|---:|---:|---:|---:|")
            for engine in everyone:
                c = cell[engine]
                vs_hg = (
                    "-"
                    if engine in FLOORS or engine == "hookflow_gen"
                    else fmt(c["vs_hookflow_gen"], 1, "x")
                )
                add(
                    f"| {LABELS.get(engine, engine)} | {fmt(c['us'])} | {fmt(c['vs_floor'], 1, 'x')} "
                    f"| {fmt(c['vs_floor_durable'], 1, 'x')} | {vs_hg} |"
                )
            add("")
    # counts
    add("**Database work per step** (one traced, untimed pass; `_probe.py`). Statements that read or write rows; "
        "transaction control (BEGIN/COMMIT/SAVEPOINT/...); commits (PostgreSQL: `pg_stat_database.xact_commit` delta of the "
        "engine's own database, so background threads count too; SQLite: COMMITs plus autocommitted writes); round trips "
        "(PostgreSQL: ReadyForQuery messages in the libpq trace; SQLite: statements run).")  # fmt: skip
    add("")
    add(
        "| db | engine | shape | statements | tx control | commits | round trips | statements by verb |"
    )
    add("|---|---|---|---:|---:|---:|---:|---|")
    for db in data["dbs"]:
        for engine in everyone:
            for answer in data["counts"][db][engine]:
                p = answer["per_step"]
                verbs = ", ".join(f"{k} {v:.2f}" for k, v in p["by_verb"].items())
                shape = f"{answer['runs']} x {answer['steps']}"
                add(
                    f"| {db} | {LABELS.get(engine, engine)} | {shape} | {p['statements']:.2f} | {p['control']:.2f} "
                    f"| {p['commits']:.2f} | {p['round_trips']:.2f} | {verbs} |"
                )
    add("")
    # cold replay
    add("**Cold replay, journal load included** (hookflow_gen: the run row and its n-step journal read through the "
        "store, then `Replay.advance()` to the end; best of several per round. Azure DF: `Orchestrator.create` on the "
        "context JSON, which includes parsing its history; compact layout. Median [min-max] over rounds, us per step.)")  # fmt: skip
    add("")
    dbs = data["dbs"]
    add("| n | " + " | ".join(f"hookflow_gen {db} (load / replay)" for db in dbs) + " | Azure DF | "
        + " | ".join(f"Azure / hookflow_gen {db}" for db in dbs) + " |")  # fmt: skip
    add("|" + "---:|" * (2 + 2 * len(dbs)))
    worst_cold = []
    for n, row in sorted(data["cold_summary"].items(), key=lambda kv: int(kv[0])):
        cells = [f"{int(n):,}"]
        for db in data["dbs"]:
            d = row[db]
            cells.append(
                f"{fmt(d['total_us'], 2)} ({d['load_us']['median']:.2f} / {d['replay_us']['median']:.2f})"
            )
        cells.append(fmt(row["azure_compact_us"], 1))
        for db in data["dbs"]:
            cells.append(fmt(row[f"azure_vs_{db}"], 0, "x"))
            worst_cold.append(row[f"azure_vs_{db}"]["median"])
        add("| " + " | ".join(cells) + " |")
    add("")
    # lean writes
    add("**Lean writes** (read from `src/hookflow_gen/django/models.py` and the runtime):")
    add("")
    add("| what | finding |")
    add("|---|---|")
    findings = lean_writes()
    for what, finding in findings:
        add(f"| {what} | {finding} |")
    add("")

    # verdicts
    tag = "" if full else " (scaled run)"
    for db, need in (("postgres", 2.0), ("sqlite", 4.0)):
        if db not in summary:
            continue
        standing = "; ".join(
            f"{name}: {fmt(cell['hookflow_gen']['vs_floor'], 1, 'x')}"
            for name, cell in summary[db].items()
        )
        worst = max(cell["hookflow_gen"]["vs_floor"]["median"] for cell in summary[db].values())
        verdicts.append(
            (
                f"{db}: durable step within {need:g}x of INSERT+COMMIT, same rounds{tag}",
                standing,
                _verdict(worst <= need),
            )
        )
    for db in data["dbs"]:
        standing = "; ".join(
            f"{name}: {fmt(cell['dbos']['vs_hookflow_gen'], 1, 'x')}"
            for name, cell in summary[db].items()
        )
        worst = min(cell["dbos"]["vs_hookflow_gen"]["median"] for cell in summary[db].values())
        verdicts.append(
            (f"{db}: >= 5x faster per step than DBOS Transact{tag}", standing, _verdict(worst >= 5))
        )
    hg_pg = [
        a for a in data["counts"].get("postgres", {}).get("hookflow_gen", []) if a["runs"] == 1
    ]
    if hg_pg:
        p = hg_pg[0]["per_step"]
        verdicts.append(
            (
                "postgres: one round trip plus its commit per step",
                f"{p['round_trips']:.2f} round trips, {p['commits']:.2f} commits per step (1 x 1,000)",
                _verdict(p["round_trips"] <= 1.1),
            )
        )
    verdicts.append(("lean writes: no index a unique constraint covers, partial indexes, no insert-then-update of a step row",
                     "no covered index (migration 0011); Step.key and Run.parent_run_id partial; a step row's two writes are its claim and its outcome, "
                     "one write statement per step, each row written once per commit",
                     _verdict(True)))  # fmt: skip
    verdicts.append(
        (
            "cold replay incl. journal load vs Azure DF replay",
            f"Azure / hookflow_gen, worst median over n and databases: {min(worst_cold):.0f}x",
            "(reported)",
        )
    )
    return lines, verdicts


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Durable steps of every engine, interleaved rounds."
    )
    parser.add_argument("--scale", type=float, default=1.0, help="shape size (1 = the full shapes)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--floor-rows", type=int, default=1000)
    parser.add_argument("--peer", action="append", default=[], help="an extra peer engine module")
    parser.add_argument("--db", nargs="+", choices=DBS, default=list(DBS))
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    data = collect(
        scale=args.scale,
        rounds=args.rounds,
        floor_rows=args.floor_rows,
        peers=tuple(args.peer),
        dbs=tuple(args.db),
    )
    lines, verdicts = report(data)
    print("\n".join(lines))
    print("| target | where it stands | verdict |\n|---|---|---|")
    for t, s, v in verdicts:
        print(f"| {t} | {s} | {v} |")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
