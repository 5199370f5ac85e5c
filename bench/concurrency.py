"""Benchmark: two runs of two projects at once against the same two one after the other.

Run: .venv/bin/python bench/concurrency.py [--steps 150] [--unbudgeted]

In this one run, alone on the machine, on one new $TUNEGATE_HOME with the embedded default:
  * sequential: project A's `tunegate run`, then project B's, with the default machine slots
    (1 on a CPU machine: each run gets every core);
  * concurrent: A and B started together with TUNEGATE_MACHINE_SLOTS=2 (each run gets cores / 2
    threads and OMP_WAIT_POLICY=PASSIVE, and both train at once);
  * with --unbudgeted also: A and B together with 2 slots but every core each and active OpenMP
    waiting (what two runs did before the budget).
Throughput = training tokens of both runs / the wall time during which training happened (the union
of their training intervals). The last line is a JSON object with `concurrent_vs_sequential`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TUNEGATE = str(Path(sys.executable).parent / "tunegate")


def write_params(work: Path, project: str) -> Path:
    demo = (REPO / "params" / "demo.yaml").read_text()
    eval_small = work / "eval_small.jsonl"
    if not eval_small.exists():
        eval_small.write_text("\n".join((REPO / "data" / "demo" / "eval.jsonl").read_text().splitlines()[::10]) + "\n")
    text = demo.replace("registered_name: tunegate-demo-assistant", f"registered_name: {project}-assistant")
    text = text.replace("  name: tunegate-demo\n", f"  name: {project}\n")
    text = text.replace("- {path: data/demo/eval.jsonl, name: demo_eval}", f"- {{path: {eval_small}, name: demo_eval}}")
    path = work / f"{project}.yaml"
    path.write_text(text)
    return path


def start(params: Path, env: dict[str, str], steps: int) -> subprocess.Popen:
    sets = [f"train.max_steps={steps}", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.capability.enabled=false", "eval.judge.enabled=false", "gate.capability_may_not_drop=null", "gate.min_win_rate=null",
            "eval.bootstrap_resamples=100", "eval.max_new_tokens=8",
            "gate.rules=[{metric: response_loss, max_regression: 0.5}]"]  # the demo's ifeval rule is off with its suite
    args = [TUNEGATE, "run", "--json", "-p", str(params)]
    for item in sets:
        args += ["--set", item]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"tunegate run failed ({proc.returncode}):\n{err[-4000:]}")
    train = json.loads(out.strip().splitlines()[-1])["train"]
    return {"tokens": train["num_tokens"], "started_at": train["started_at"], "finished_at": train["finished_at"],
            "train_runtime_s": train["train_runtime_s"], "tokens_per_second": round(train["tokens_per_second"], 1)}


def throughput(runs: list[dict], sequential: bool) -> float:
    tokens = sum(r["tokens"] for r in runs)
    if sequential:
        busy = sum(r["finished_at"] - r["started_at"] for r in runs)
    else:
        busy = max(r["finished_at"] for r in runs) - min(r["started_at"] for r in runs)
    return tokens / busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--unbudgeted", action="store_true", help="also measure two runs at once without the thread budget")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as work_dir:
        work = Path(work_dir)
        base = {**os.environ, "TUNEGATE_HOME": str(work / "home"), "TUNEGATE_MACHINE_DIR": str(work / "machine")}
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TUNEGATE_AUDIT_DB", "TUNEGATE_MACHINE_SLOTS",
                    "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            base.pop(key, None)
        projects = [write_params(work, name) for name in ("bench-a", "bench-b")]
        finish(start(projects[0], base, 2))  # warm the home (Prefect database, MLflow store, DVC): not measured

        sequential = [finish(start(p, base, args.steps)) for p in projects]
        seq = throughput(sequential, sequential=True)
        print(f"sequential: {seq:.0f} tokens/s ({[r['tokens_per_second'] for r in sequential]})", flush=True)

        together = {**base, "TUNEGATE_MACHINE_SLOTS": "2"}
        procs = [start(p, together, args.steps) for p in projects]
        concurrent = [finish(p) for p in procs]
        con = throughput(concurrent, sequential=False)
        print(f"concurrent, 2 slots: {con:.0f} tokens/s ({[r['tokens_per_second'] for r in concurrent]})", flush=True)
        result = {"machine": machine(), "steps": args.steps, "sequential_tokens_per_s": round(seq, 1),
                  "concurrent_tokens_per_s": round(con, 1), "concurrent_vs_sequential": round(con / seq, 3),
                  "sequential": sequential, "concurrent": concurrent}
        if args.unbudgeted:
            cores = str(len(os.sched_getaffinity(0)))
            wild = {**together, "OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores, "OMP_WAIT_POLICY": "ACTIVE"}
            procs = [start(p, wild, args.steps) for p in projects]
            unbudgeted = [finish(p) for p in procs]
            unb = throughput(unbudgeted, sequential=False)
            print(f"concurrent, no budget: {unb:.0f} tokens/s ({[r['tokens_per_second'] for r in unbudgeted]})", flush=True)
            result.update({"unbudgeted_tokens_per_s": round(unb, 1), "unbudgeted_vs_sequential": round(unb / seq, 3),
                           "unbudgeted": unbudgeted})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
