import pytest

from tunegate.data.templates import CHAT_TEMPLATES, chat_template
from tunegate.tuning.modeling import load_tokenizer

MESSAGES = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_prompt_is_prefix_of_full_text_and_answer_ends_with_eos(name, base_model_path):
    tokenizer = load_tokenizer(base_model_path, name)
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert full.startswith(prompt)
    assert full.endswith("hi" + tokenizer.eos_token)
    assert prompt.startswith(tokenizer.bos_token)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids, "tokenised prompt must be a prefix (loss mask boundary)"
    assert full_ids[-1] == tokenizer.eos_token_id


def test_unknown_template_lists_allowed():
    with pytest.raises(ValueError, match="alpaca"):
        chat_template("nope")


def test_tokenizer_gets_pad_token(base_model_path):
    tokenizer = load_tokenizer(base_model_path, "alpaca")
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
