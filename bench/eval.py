"""Benchmark: batched generation (left padding, KV cache) against one prompt at a time.

Run: .venv/bin/python bench/eval.py [--prompts 64] [--capability-items 100]

Same model (stories260K), same prompts (the demo eval split), greedy decoding; reports both
times (each the best of ``--repeats`` runs, measured alternately in one process, so a first call's
set-up or a busy moment of the machine counts against neither), their ratio, and checks the outputs
are identical. Then the capability suite (lm-evaluation-harness, story continuation and PIQA, ``--capability-items``
each): items/s with ``eval.capability.batch_size`` against one item at a time, and the per-item scores compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunegate.data.demo import generate_demo_records  # noqa: E402
from tunegate.evaluation.suites import generate, render_prompts  # noqa: E402
from tunegate.params import load_params  # noqa: E402
from tunegate.tuning.modeling import load_base_model, load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--capability-items", type=int, default=100, help="per task; 0: skip the capability part")
    args = parser.parse_args()
    params = load_params(REPO / "params" / "demo.yaml")
    d = params.demo_data
    _, evaluation = generate_demo_records(d.seed, d.train_per_family, d.eval_per_family, d.families)
    model = load_base_model(params.base_model_path())
    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    prompts = render_prompts(tokenizer, evaluation[: args.prompts])

    def timed(run):
        start = time.perf_counter()
        out = run()
        return time.perf_counter() - start, out

    batched_times, single_times = [], []
    for _ in range(max(1, args.repeats)):
        seconds, batched = timed(lambda: generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size))
        batched_times.append(seconds)
        seconds, single = timed(lambda: [generate(model, tokenizer, [p], args.max_new_tokens, 1)[0] for p in prompts])
        single_times.append(seconds)
    batched_s, single_s = min(batched_times), min(single_times)

    identical = sum(a == b for a, b in zip(batched, single))
    capability = capability_bench(params, model, tokenizer, args.capability_items, args.repeats) if args.capability_items else None
    print(json.dumps({
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "repeats": len(batched_times),
        "batched_s": round(batched_s, 3),
        "one_at_a_time_s": round(single_s, 2),
        "batched_runs_s": [round(t, 3) for t in batched_times],
        "one_at_a_time_runs_s": [round(t, 2) for t in single_times],
        "speedup": round(single_s / batched_s, 1),
        "identical_outputs": f"{identical}/{len(prompts)}",
        **({"capability": capability} if capability else {}),
    }, indent=2))
    if identical != len(prompts):
        raise SystemExit("batched and one-at-a-time outputs differ")
    if capability and not capability["identical_scores"]:
        raise SystemExit("the capability suite's batched and one-at-a-time scores differ")


def capability_bench(params, model, tokenizer, items: int, repeats: int) -> dict:
    """The capability suite on story continuation and PIQA, batched against one item at a time (best of
    ``repeats`` each, alternating); per-item scores must be identical."""
    from tunegate.evaluation.scores import ModelEvaluation
    from tunegate.evaluation.suite_capability import run_capability

    settings = ["eval.capability.enabled=true", "eval.capability.tasks=[story_continuation, piqa]", f"eval.capability.max_items={items}"]
    batched_params = load_params(REPO / "params" / "demo.yaml", settings)
    single_params = load_params(REPO / "params" / "demo.yaml", settings + ["eval.capability.batch_size=1"])
    times: dict[str, list[float]] = {"batched": [], "single": []}
    results = {}
    for _ in range(max(1, repeats)):
        for name, p in (("batched", batched_params), ("single", single_params)):
            result = ModelEvaluation()
            start = time.perf_counter()
            run_capability(model, tokenizer, [], p.eval, result)
            times[name].append(time.perf_counter() - start)
            results[name] = [(s.key, s.value) for s in result.scores["capability"]]
    n = len(results["batched"])
    batched_s, single_s = min(times["batched"]), min(times["single"])
    return {
        "tasks": ["story_continuation", "piqa"], "items": n, "batch_size": batched_params.eval.capability.batch_size,
        "batched_items_per_s": round(n / batched_s, 1), "one_at_a_time_items_per_s": round(n / single_s, 1),
        "speedup": round(single_s / batched_s, 2), "identical_scores": results["batched"] == results["single"],
        "batched_runs_s": [round(t, 2) for t in times["batched"]], "one_at_a_time_runs_s": [round(t, 2) for t in times["single"]],
    }


if __name__ == "__main__":
    main()
