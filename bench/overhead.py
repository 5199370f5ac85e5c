"""Benchmark: the fixed overhead of `tunegate run` against the import floor, on a new and a warm home.

Run: .venv/bin/python bench/overhead.py [--steps 1]

In this one run, alone on the machine (another heavy process voids every figure):
  1. the import floor: a fresh interpreter importing the stack a run needs
     (torch, transformers, peft, trl, prefect, mlflow, great_expectations, dvc.repo), best of two;
  2. `tunegate run --set train.max_steps=1 --json` on a new $TUNEGATE_HOME (no Prefect database,
     no MLflow store: both are created), with the embedded default (no servers);
  3. the same command again on that home, now warm.
Overhead = wall - training (the trainer's runtime) - evaluation (both models' evaluation stages).
The last line is a JSON object: the stage timings of both runs, overhead_warm_s, overhead_new_home_s,
import_floor_s and their ratios to the floor (issue #14: <= 1.5x warm, <= 2x new home).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TUNEGATE = str(Path(sys.executable).parent / "tunegate")
STACK = "import torch, transformers, peft, trl, prefect, mlflow, great_expectations, dvc.repo"


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model or platform.machine()}, {len(os.sched_getaffinity(0))} cores"


def import_floor(env: dict[str, str]) -> float:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", STACK], cwd=REPO, env=env, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def one_run(env: dict[str, str], steps: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([TUNEGATE, "run", "--json", "--set", f"train.max_steps={steps}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"tunegate run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = summary["timings"]
    training = float(summary["train"]["train_runtime_s"])
    evaluation = sum(v for k, v in stages.items() if k.startswith("evaluation_"))
    return {
        "wall_s": round(wall, 2), "training_s": round(training, 2), "evaluation_s": round(evaluation, 2),
        "overhead_s": round(wall - training - evaluation, 2), "timings": stages, "outcome": summary.get("outcome"),
        "baseline_evaluation_reused": (summary.get("baseline_evaluation") or {}).get("reused"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-home-") as home:
        env = {**os.environ, "TUNEGATE_HOME": home}
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TUNEGATE_AUDIT_DB"):
            env.pop(key, None)
        floor = import_floor(env)
        print(f"import floor ({STACK}): {floor:.1f} s", flush=True)
        new = one_run(env, args.steps)
        print(f"new home: wall {new['wall_s']} s, training {new['training_s']} s, evaluation {new['evaluation_s']} s "
              f"-> overhead {new['overhead_s']} s ({new['overhead_s'] / floor:.2f}x the floor)", flush=True)
        warm = one_run(env, args.steps)
        print(f"warm home: wall {warm['wall_s']} s, training {warm['training_s']} s, evaluation {warm['evaluation_s']} s "
              f"-> overhead {warm['overhead_s']} s ({warm['overhead_s'] / floor:.2f}x the floor)", flush=True)
    print(json.dumps({
        "machine": machine(),
        "steps": args.steps,
        "import_floor_s": round(floor, 2),
        "overhead_new_home_s": new["overhead_s"],
        "overhead_warm_s": warm["overhead_s"],
        "new_home_vs_floor": round(new["overhead_s"] / floor, 3),
        "warm_vs_floor": round(warm["overhead_s"] / floor, 3),
        "new_home": new,
        "warm": warm,
    }))


if __name__ == "__main__":
    main()
