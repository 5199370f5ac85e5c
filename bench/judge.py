"""Benchmark: a judge's agreement with human labels, both orders, as the judge suite judges.

Run: .venv/bin/python bench/judge.py --pairs FILE [--params params/demo.yaml] [--base-url URL --model NAME | --model-path DIR]

FILE is JSONL of ``{prompt, answer_a, answer_b, label: a|b|tie}``. The judge is ``eval.judge.judge`` of the params
file, or the endpoint / local model given here. Prints JSON: agreement (the share of pairs whose combined
verdict, both orders agreeing or else a tie, equals the label), Cohen's kappa and position-swap consistency
(the share of pairs whose two orders agree).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunegate.evaluation.judge import agreement, make_judge  # noqa: E402
from tunegate.params import load_params  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, type=Path)
    parser.add_argument("--params", default=str(REPO / "params" / "demo.yaml"))
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (with --model)")
    parser.add_argument("--model", help="the endpoint's model name")
    parser.add_argument("--model-path", help="a local model as in-process judge")
    args = parser.parse_args(argv)
    overrides = []
    if args.base_url:
        overrides += ["eval.judge.judge.kind=openai", f"eval.judge.judge.base_url={args.base_url}", f"eval.judge.judge.model={args.model}"]
    elif args.model_path:
        overrides += ["eval.judge.judge.kind=in_process", f"eval.judge.judge.model_path={args.model_path}"]
    params = load_params(Path(args.params), overrides)
    pairs = []
    for number, line in enumerate(args.pairs.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                pairs.append({k: row[k] for k in ("prompt", "answer_a", "answer_b", "label")})
            except (ValueError, KeyError) as error:
                raise SystemExit(f"{args.pairs}: line {number}: expected {{prompt, answer_a, answer_b, label}}: {error}") from None
    judge = make_judge(params.eval.judge.judge, str(params.base_model_path()))
    try:
        print(json.dumps(agreement(pairs, judge, params.eval.judge), indent=2))
    finally:
        judge.close()


if __name__ == "__main__":
    main()
