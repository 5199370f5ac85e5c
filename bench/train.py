"""Benchmark: tunegate's defaults against TRL's, its batch layouts against padding, and its tuning step
against a bare TRL script.

Run: .venv/bin/python bench/train.py [--epochs 1] [--steps 40] [--repeats 2]

Every comparison runs side by side in this one process, on stories260K, CPU:
  1. defaults, on the demo's training data (params/demo.yaml ``demo_data``), ``--epochs`` each: tunegate's
     ``train_model`` with the demo params vs ``SFTTrainer`` with TRL's own defaults (its SFTConfig: batch 8,
     activation checkpointing on, padded, no packing; fp32 like tunegate on CPU, since TRL's bf16 default
     is a GPU setting) on a prompt/completion dataset, same model, LoRA config and epochs. Wall time from
     loading the model to the end of training, and the final loss (TRL's learning rate is its own 2e-5,
     so its loss is not comparable: shown, not judged);
  2. tunegate's default batches (``train.padding_free: auto``: packed rows on CPU) vs padded
     (``train.padding_free: false``) on the same demo data and epochs: wall time and the final loss
     (the same batches, so the same loss up to float order);
  3. the same two on a length-skewed dataset (80% 4-word answers), ``--steps`` steps: tokens/s;
  4. tunegate ``train_model`` vs a bare ``SFTTrainer`` script at tunegate's settings (same LoRA config,
     data, batch size, no checkpointing), ``--steps`` steps: tokens/s;
  5. ``packing: true`` (wrapped on CPU) vs padded on the skewed dataset: tokens/s.
Each configuration runs ``--repeats`` times, alternating, and the best run counts. The last line is JSON:
``default_vs_trl_default`` (time ratio, > 1: tunegate faster), ``padding_free_vs_padded`` (time ratio on the
demo data), ``final_loss_delta`` (relative, default vs padded), and the rest.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
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


def trl_defaults(params, records, epochs: float) -> tuple[float, float]:
    """SFTTrainer as its documentation shows it: TRL's SFTConfig defaults, the same model, LoRA and epochs.
    Returns (wall seconds from loading the model to the end of training, final logged loss)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tunegate.tuning.modeling import load_base_model, load_tokenizer
    from tunegate.tuning.seeding import seed_everything
    from tunegate.tuning.training import peft_config

    seed_everything(params.project.seed)
    started = time.perf_counter()
    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, num_train_epochs=epochs, use_cpu=True, bf16=False, report_to="none",
                         save_strategy="no", seed=params.project.seed, disable_tqdm=True)
        trainer = SFTTrainer(model=load_base_model(params.base_model_path()), args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config(params))
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return time.perf_counter() - started, float(losses[-1])


def tunegate_run(params, records) -> tuple[float, float, float]:
    """(wall seconds of train_model, its final logged loss, its tokens/s)."""
    from tunegate.tuning.training import train_model

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train_model(params, records, Path(out))
    return time.perf_counter() - started, result.final_loss, result.tokens_per_second


def tunegate(params, records) -> float:
    return tunegate_run(params, records)[2]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs of the demo data for the defaults")
    parser.add_argument("--steps", type=int, default=40, help="steps of the fixed-step comparisons")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, alternating; the best counts")
    args = parser.parse_args()
    demo = REPO / "params" / "demo.yaml"
    base = load_params(demo)
    d = base.demo_data
    demo_train, _ = generate_demo_records(d.seed, d.train_per_family, d.eval_per_family, d.families)
    runs: dict[str, list] = {k: [] for k in ("tunegate_default", "trl_default", "padded")}
    default = load_params(demo, [f"train.epochs={args.epochs}", "train.save_steps=null", "train.checkpoint_minutes=null"])
    padded = load_params(demo, [f"train.epochs={args.epochs}", "train.save_steps=null", "train.checkpoint_minutes=null",
                                "train.padding_free=false"])
    for _ in range(args.repeats):  # alternate, so drift affects all alike
        runs["tunegate_default"].append(tunegate_run(default, demo_train)[:2])
        runs["trl_default"].append(trl_defaults(base, demo_train, args.epochs))
        runs["padded"].append(tunegate_run(padded, demo_train)[:2])
    wall = {k: min(t for t, _ in v) for k, v in runs.items()}
    final = {k: v[0][1] for k, v in runs.items()}

    common = [f"train.max_steps={args.steps}", "train.logging_steps=5", "train.batch_size=32", "train.save_steps=null"]
    train, _ = generate_demo_records(7, 200, 5, ["story_start", "refusal", "json_color", "compare", "lowercase"])
    params = load_params(demo, common)
    rates = {k: [] for k in ("tunegate", "bare_trl", "skewed_default", "skewed_padded", "packed")}
    skewed = skewed_records(1500)
    skewed_default = load_params(demo, common + ["train.max_length=256"])
    skewed_padded = load_params(demo, common + ["train.max_length=256", "train.padding_free=false"])
    packed = load_params(demo, common + ["train.max_length=256", "train.packing=true"])
    for _ in range(args.repeats):
        rates["tunegate"].append(tunegate(params, train))
        rates["bare_trl"].append(bare_trl(params, train))
        rates["skewed_default"].append(tunegate(skewed_default, skewed))
        rates["skewed_padded"].append(tunegate(skewed_padded, skewed))
        rates["packed"].append(tunegate(packed, skewed))
    best = {k: max(v) for k, v in rates.items()}
    print(json.dumps({
        "demo_examples": len(demo_train),
        "epochs": args.epochs,
        "steps": args.steps,
        "wall_s": {k: round(v, 1) for k, v in wall.items()},
        "final_loss": {k: round(v, 5) for k, v in final.items()},
        "tokens_per_s": {k: round(v) for k, v in best.items()},
        "default_vs_trl_default": round(wall["trl_default"] / wall["tunegate_default"], 3),
        "padding_free_vs_padded": round(wall["padded"] / wall["tunegate_default"], 3),
        "final_loss_delta": round((final["tunegate_default"] - final["padded"]) / final["padded"], 6),
        "padding_free_vs_padded_skewed": round(best["skewed_default"] / best["skewed_padded"], 3),
        "tunegate_vs_bare_trl": round(best["tunegate"] / best["bare_trl"], 3),
        "packed_vs_padded": round(best["packed"] / best["skewed_padded"], 3),
        "all_runs": {**{k: [round(t, 1) for t, _ in v] for k, v in runs.items()},
                     **{k: [round(x) for x in v] for k, v in rates.items()}},
    }))


if __name__ == "__main__":
    main()
