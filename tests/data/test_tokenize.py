"""Loss masks: labels on assistant turns and their EOS only; an all-masked example is an error."""

import pytest

from tunegate.data.tokenize import IGNORE, AllMaskedError, tokenize_conversation, tokenize_records
from tunegate.tuning.modeling import load_tokenizer


@pytest.fixture(scope="module", params=["alpaca", "chatml"])
def tokenizer(request, base_model_path):
    return load_tokenizer(base_model_path, request.param)


def labelled_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


def test_single_turn_labels_answer_and_eos(tokenizer):
    messages = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi there"}]
    example = tokenize_conversation(tokenizer, messages, max_length=512)
    assert labelled_text(tokenizer, example) == "hi there</s>"
    assert example.labels[-1] == tokenizer.eos_token_id
    assert example.labels[0] == IGNORE


def test_multi_turn_and_tool_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "CALL weather"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Bye"},
    ]
    example = tokenize_conversation(tokenizer, messages, max_length=512)
    assert labelled_text(tokenizer, example) == "CALL weather</s>It is sunny.</s>Bye</s>"
    last_only = tokenize_conversation(tokenizer, messages, max_length=512, last_turn_only=True)
    assert labelled_text(tokenizer, last_only) == "Bye</s>"


def test_every_label_masked_is_an_error(tokenizer):
    records = [
        {"id": "ok", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"id": "long-one", "source": {"file": "data.jsonl", "index": 7},
         "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "b"}]},
    ]
    with pytest.raises(AllMaskedError) as err:
        tokenize_records(tokenizer, records, max_length=64)
    assert "data.jsonl record 7 (id long-one)" in str(err.value) and "every label is masked" in str(err.value)
    assert len(tokenize_records(tokenizer, records[:1], max_length=64)) == 1


def test_demo_training_set_has_no_all_masked_example(base_model_path):
    from pathlib import Path

    from tunegate.data.demo import generate_demo_records
    from tunegate.params import load_params

    params = load_params(Path(__file__).resolve().parents[2] / "params" / "demo.yaml")
    d = params.demo_data
    train, _ = generate_demo_records(d.seed, d.train_per_family, d.eval_per_family, d.families)
    tokenizer = load_tokenizer(base_model_path, params.model.chat_template)
    examples = tokenize_records(tokenizer, train, params.train.max_length)
    assert min(e.trainable for e in examples) >= 2  # at least one answer token and EOS
