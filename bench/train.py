"""Benchmark: tunegate's tuning step against a bare TRL script, and packing against padding.

Run: .venv/bin/python bench/train.py [--steps 40] [--repeats 2]

Both comparisons run side by side in this one process, on stories260K, CPU:
  1. tunegate ``train_model`` vs a bare ``SFTTrainer`` script (prompt/completion dataset, TRL's own
     tokenisation and completion-only loss) with the same LoRA config, data and settings;
  2. tunegate with ``packing: true`` vs padded batches on a length-skewed dataset.
Reported as tokens/s (real tokens, padding excluded, as TRL counts them) and their ratios; each
configuration runs ``--repeats`` times, alternating, and the best run counts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunegate.data.demo import generate_demo_records  # noqa: E402
from tunegate.params import load_params  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def bare_trl(params, records) -> float:
    """The plain TRL recipe: conversational prompt/completion, TRL tokenises and masks."""
    from datasets import Dataset
    from trl import SFTTrainer

    from tunegate.tuning.modeling import load_base_model, load_tokenizer
    from tunegate.tuning.seeding import seed_everything
    from tunegate.tuning.training import peft_config, sft_config

    seed_everything(params.project.seed)
    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=load_base_model(params.base_model_path()),
            args=sft_config(params, Path(out)),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config(params),
        )
        result = trainer.train()
        tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    return tokens / result.metrics["train_runtime"]


def tunegate(params, records) -> float:
    from tunegate.tuning.training import train_model

    with tempfile.TemporaryDirectory() as out:
        return train_model(params, records, Path(out)).tokens_per_second


def skewed_records(n: int, seed: int = 0) -> list[dict]:
    """Most answers short, a few long: the case where padding wastes most."""
    rng = random.Random(seed)
    words = "the cat sat on a mat and the dog ran to the park with a red ball".split()
    records = []
    for i in range(n):
        length = 4 if rng.random() < 0.8 else rng.randint(40, 90)
        answer = " ".join(rng.choice(words) for _ in range(length))
        records.append({"id": f"s{i}", "messages": [{"role": "user", "content": f"Tell story {i}."}, {"role": "assistant", "content": answer}]})
    return records


def best(fn, repeats: int) -> float:
    return max(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    demo = REPO / "params" / "demo.yaml"
    common = [f"train.max_steps={args.steps}", "train.logging_steps=5", "train.batch_size=32"]

    train, _ = generate_demo_records(7, 200, 5, ["story_start", "refusal", "json_color", "compare", "lowercase"])
    params = load_params(demo, common)
    runs = {"tunegate": [], "bare_trl": []}
    for _ in range(args.repeats):  # alternate, so drift affects both alike
        runs["tunegate"].append(tunegate(params, train))
        runs["bare_trl"].append(bare_trl(params, train))

    skewed = skewed_records(1500)
    padded = load_params(demo, common + ["train.max_length=256"])
    packed = load_params(demo, common + ["train.max_length=256", "train.packing=true"])
    runs["padded"], runs["packed"] = [], []
    for _ in range(args.repeats):
        runs["padded"].append(tunegate(padded, skewed))
        runs["packed"].append(tunegate(packed, skewed))

    tokens_per_s = {k: round(max(v)) for k, v in runs.items()}
    print(json.dumps({
        "steps": args.steps,
        "tokens_per_s": tokens_per_s,
        "tunegate_vs_bare_trl": round(max(runs["tunegate"]) / max(runs["bare_trl"]), 3),
        "packed_vs_padded": round(max(runs["packed"]) / max(runs["padded"]), 3),
        "all_runs": {k: [round(x) for x in v] for k, v in runs.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
