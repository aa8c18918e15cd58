"""Run the fault-injection scenarios at full scale and commit the figures.

    python -m tests.chaos.run --full      # 300+ jobs per scenario; ~15 min here
    python -m tests.chaos.run             # the CI scale, printed only
    python -m tests.chaos.run --full --only poisoned_input poisoned_input_control_no_isolation
                                          # some scenarios, merged into the committed figures

Writes ``bench/results/chaos.json`` with ``--full``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.chaos import harness

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "chaos.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full scale, and write bench/results/chaos.json")
    parser.add_argument(
        "--only", nargs="+", metavar="SCENARIO", help="run these scenarios; --full merges them into chaos.json"
    )
    args = parser.parse_args()
    jobs, kills, outage = (300, 6, 30.0) if args.full else (30, 2, 4.0)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sfumato-chaos-") as tmp:
        root = Path(tmp)
        runs = {
            "worker_kills": lambda: harness.scenario_worker_kills(harness.new_workdir(root, "k"), jobs, kills),
            "worker_kills_control_no_retries": lambda: harness.scenario_worker_kills(
                harness.new_workdir(root, "kc"), jobs // 3, kills, attempts=1
            ),
            "redis_kill_aof": lambda: harness.scenario_redis_kill(harness.new_workdir(root, "r"), jobs),
            "redis_kill_control_no_aof": lambda: harness.scenario_redis_kill(
                harness.new_workdir(root, "rc"), jobs // 3, aof=False
            ),
            "storage_outage": lambda: harness.scenario_storage_outage(
                harness.new_workdir(root, "s"), jobs, outage, budget_s=2 * outage
            ),
            "storage_outage_control_no_retry": lambda: harness.scenario_storage_outage(
                harness.new_workdir(root, "sc"), jobs // 3, outage, budget_s=0
            ),
            "sigterm_during_batch": lambda: harness.scenario_sigterm(harness.new_workdir(root, "t"), 40),
            "sigkill_control_no_retries": lambda: harness.scenario_sigterm(
                harness.new_workdir(root, "tc"), 40, kill_instead=True
            ),
            "poisoned_input": lambda: harness.scenario_poisoned_input(harness.new_workdir(root, "p"), jobs, jobs // 20),
            "poisoned_input_control_no_isolation": lambda: harness.scenario_poisoned_input(
                harness.new_workdir(root, "pc"), jobs // 3, jobs // 60, isolation=False
            ),
        }
        unknown = set(args.only or ()) - runs.keys()
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {sorted(runs)}")
        for name, run in runs.items():
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            results[name] = {**run(), "wall_s": round(time.monotonic() - started, 1)}
            print(name, json.dumps(results[name]), flush=True)
    if args.full:
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if args.only:  # the other scenarios keep their figures (each scenario records when it ran)
            kept = json.loads(RESULTS.read_text())["scenarios"] if RESULTS.exists() else {}
            results = {**kept, **{name: {**r, "measured_at": measured_at} for name, r in results.items()}}
        out = {"measured_at": measured_at, "scenarios": results}
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
