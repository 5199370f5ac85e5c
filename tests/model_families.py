"""Tiny random-initialised models of other families than stories260K, for tests.

Built offline from ``../shared/tokenizers/gpt2/tokenizer.json`` into a directory the caller
gives (a test's temp dir), deterministically (fixed torch seed), safetensors only. They learn
next to nothing in a few steps, but every code path a real model of the family takes runs:

- :func:`build_tiny_gpt2`: ``GPT2LMHeadModel`` (Conv1D projections, tied embeddings), GPT-2's
  tokenizer with ``<|endoftext|>`` as BOS/EOS/UNK, no pad token and no chat template, like the
  real GPT-2.
- :func:`build_tiny_chatml`: ``Qwen2ForCausalLM`` whose tokenizer adds ``<|im_start|>`` and
  ``<|im_end|>`` and carries Qwen2.5-Instruct's chat template with tool support; EOS (and pad) is
  ``<|endoftext|>``, deliberately not the end-of-turn token ``<|im_end|>`` (as in Qwen's base
  tokenizers), and ``generation_config.eos_token_id`` is the ``<|endoftext|>`` id only. Whoever
  stops generation at EOS alone runs past the end of the assistant's turn.

Run ``python tests/model_families.py`` for a self-check (build, load, generate, sizes, timing).
"""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
GPT2_TOKENIZER = SHARED / "tokenizers" / "gpt2" / "tokenizer.json"

SEED = 1234
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_TOKENS = ("<tool_call>", "</tool_call>")

# Qwen2.5-Instruct's chat template (tools as JSON lines inside <tools></tools> in the system turn,
# assistant tool calls from ``message.tool_calls`` as <tool_call> JSON, tool results as
# <tool_response> inside a user turn, <|im_end|> after every turn, generation prompt
# <|im_start|>assistant\n), as published with the model.
QWEN25_CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# A conversation with every kind of turn, for checks of the template.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "city name"}},
            "required": ["city"],
        },
    },
}
TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": '{"temperature_c": 21, "sky": "clear"}'},
    {"role": "assistant", "content": "It is 21 degrees and clear in Paris."},
]


def _gpt2_tokenizer(**special):
    from transformers import PreTrainedTokenizerFast

    if not GPT2_TOKENIZER.is_file():
        raise FileNotFoundError(f"{GPT2_TOKENIZER} is missing: the tiny model families need ../shared beside the repo")
    return PreTrainedTokenizerFast(tokenizer_file=str(GPT2_TOKENIZER), model_max_length=256, **special)


def build_tiny_gpt2(out_dir: Path, seed: int = SEED) -> Path:
    """A 2-layer GPT-2 (Conv1D layers, n_embd 32, 2 heads, 256 positions) with GPT-2's tokenizer.

    No pad token and no chat template, like the real GPT-2. Returns ``out_dir``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out_dir = Path(out_dir)
    tokenizer = _gpt2_tokenizer(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)
    assert tokenizer.pad_token is None and not tokenizer.chat_template
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=eot, eos_token_id=eot,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    return _save(model, tokenizer, out_dir, bos_token_id=eot, eos_token_id=eot)


def _save(model, tokenizer, out_dir: Path, **generation) -> Path:
    """Set the generation config's special ids and save model (safetensors) and tokenizer to ``out_dir``."""
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_chatml(out_dir: Path, seed: int = SEED) -> Path:
    """A 2-layer Qwen2 (hidden 32, 4 heads / 2 KV heads, intermediate 64, 256 positions, tied
    embeddings) with GPT-2's tokenizer plus ``<|im_start|>``/``<|im_end|>`` and Qwen2.5-Instruct's
    chat template with tools.

    EOS and pad are ``<|endoftext|>`` (not the end-of-turn ``<|im_end|>``), and so is
    ``generation_config.eos_token_id``, alone. Returns ``out_dir``.
    """
    import torch
    from tokenizers import AddedToken
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = _gpt2_tokenizer(eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    # Qwen's <tool_call> markers are added, non-special tokens: decoding keeps them.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_CALL_TOKENS])
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen2Config(
        vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=eot, pad_token_id=eot,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.resize_token_embeddings(len(tokenizer))  # new rows drawn from the seeded generator
    model.eval()
    return _save(model, tokenizer, out_dir, bos_token_id=None, eos_token_id=eot, pad_token_id=eot)


def n_params(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def _self_check() -> None:
    """Build both into a temp dir, load them offline, render the tool conversation, generate."""
    import tempfile
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("gpt2", build_tiny_gpt2), ("chatml", build_tiny_chatml)):
            start = time.perf_counter()
            path = build(Path(tmp) / name)
            built = time.perf_counter() - start
            files = sorted(p.name for p in path.iterdir())
            assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files), files
            model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            if tokenizer.chat_template:
                text = tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=[WEATHER_TOOL], tokenize=False)
                print(text)
                prompt = tokenizer.apply_chat_template(TOOL_CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
            else:
                prompt = "Once upon a time"
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            print(
                f"{name}: {type(model).__name__}, {n_params(model):,} params, vocab {len(tokenizer)}, built in "
                f"{built:.2f} s, eos={tokenizer.eos_token!r} pad={tokenizer.pad_token!r}, "
                f"generation eos={model.generation_config.eos_token_id}, files={files}"
            )
            print("  generated:", repr(tokenizer.decode(out[0, enc["input_ids"].shape[1]:])))


if __name__ == "__main__":
    _self_check()
