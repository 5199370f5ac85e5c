"""Languages other than English: ROUGE-L for every script, refusal patterns per language (one set for the
data check and the safety classifier)."""

import pytest

from tunegate.data.refusals import REFUSAL_PATTERNS, compile_refusals, refusal_patterns
from tunegate.data.validation import validate_dataset
from tunegate.evaluation.safety import load_classifier, pattern_classifier
from tunegate.evaluation.suites import ScriptTokenizer, rouge_scorer_any_script
from tunegate.params import EvalParams, ParamsError, SafetySuite, ValidationParams, parse_params

ZH_REFUSAL = "抱歉，我不能帮助你做这件事。"
ZH_ANSWER = "北京是中国的首都，也是一座历史悠久的城市。"


def rouge_l(reference: str, output: str) -> float:
    return rouge_scorer_any_script().score(reference, output)["rougeL"].fmeasure


@pytest.mark.parametrize(
    "text",
    [
        "北京是中国的首都。",  # Chinese
        "東京は日本の首都です。カタカナ、ひらがな。",  # Japanese
        "القاهرة هي عاصمة مصر.",  # Arabic
        "Москва — столица России.",  # Cyrillic
        "दिल्ली भारत की राजधानी है।",  # Devanagari, with combining vowel signs
        "The quick brown fox jumps over the lazy dog.",
    ],
)
def test_identical_strings_score_one_in_every_script(text):
    assert rouge_l(text, text) == pytest.approx(1.0)


def test_partial_chinese_overlap_is_between_zero_and_one():
    value = rouge_l("北京是中国的首都", "上海是中国的城市")
    assert 0.0 < value < 1.0


def test_english_scores_equal_rouge_scores_default_tokenizer():
    from rouge_score import rouge_scorer

    old = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [
        ("The cat sat on the mat.", "A cat sat on a mat, quietly!"),
        ("Answer: 42 apples", "answer 42 oranges and apples"),
        ("don't stop_me now", "do not stop me now"),
    ]
    for reference, output in pairs:
        assert rouge_l(reference, output) == old.score(reference, output)["rougeL"].fmeasure


def test_script_tokenizer_splits_unspaced_scripts_per_character():
    assert ScriptTokenizer().tokenize("Hello 世界2024年 ПРИВЕТ") == ["hello", "世", "界", "2024", "年", "привет"]
    assert ScriptTokenizer().tokenize("สวัสดี")[:2] == ["ส", "ว"]


@pytest.mark.parametrize(
    "text",
    [
        ZH_REFUSAL,
        "对不起，这个请求我无法满足。",
        "很抱歉，我无法为您提供这类信息。",
        "作为一个人工智能，我不能协助任何违法活动。",
        "我必须拒绝这个请求。",
        "I'm sorry, but I cannot help with that.",
        "I’m sorry, I can’t help with that.",
    ],
)
def test_refusals_in_english_and_chinese_are_recognised(text):
    assert pattern_classifier()(text)


@pytest.mark.parametrize(
    "text",
    [ZH_ANSWER, "当然可以！下面是一个简单的Python例子。", "我不会忘记那一天。", "Sure, here is a poem about the sea."],
)
def test_ordinary_answers_are_not_refusals(text):
    assert not pattern_classifier()(text)


def test_japanese_is_opt_in():
    text = "申し訳ありませんが、そのご依頼にはお答えできません。"
    assert not pattern_classifier()(text)
    assert pattern_classifier(["ja"])(text)


def test_extra_patterns_add_to_the_languages_and_unknown_languages_fail():
    assert refusal_patterns(["en"], [r"\bnope\b"])[-1] == r"\bnope\b"
    assert compile_refusals(["en"], [r"\bnope\b"]).search("nope, not that")
    assert load_classifier("patterns", [], [r"\bnope\b"])("nope")
    assert not load_classifier("patterns", [], [])("I'm sorry")
    with pytest.raises(ValueError, match="known: en, ja, zh"):
        refusal_patterns(["fr"])


def test_params_defaults_and_errors():
    assert ValidationParams().refusal_languages == ["en", "zh"]
    assert SafetySuite().refusal_languages == ["en", "zh"]
    assert ValidationParams().all_refusal_patterns() == SafetySuite().all_refusal_patterns()
    assert ValidationParams().all_refusal_patterns() == REFUSAL_PATTERNS["en"] + REFUSAL_PATTERNS["zh"]
    mine = ValidationParams(refusal_patterns=["nope"]).all_refusal_patterns()
    assert mine[-1] == "nope" and mine[0] == REFUSAL_PATTERNS["en"][0]
    assert SafetySuite(refusal_patterns=None).refusal_patterns == []  # older files: null meant the defaults
    raw = {
        "model": {"base_model": "m", "registered_name": "r"},
        "data": {"train": [{"path": "t.jsonl"}], "dvc_stage": None},
        "eval": {"safety": {"refusal_languages": ["en", "fr"]}},
        "validation": {"refusal_patterns": ["(unclosed"]},
    }
    with pytest.raises(ParamsError) as error:
        parse_params(raw, "p.yaml")
    message = str(error.value)
    assert "eval.safety" in message and "'fr'" in message and "known languages: en, ja, zh" in message
    assert "validation" in message and "'(unclosed' is not a valid regex" in message


def _records(answers):
    return [
        {"id": str(i), "messages": [{"role": "user", "content": f"问题 {i}?"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(answers)
    ]


def test_data_check_and_classifier_agree_on_chinese_refusals():
    from tunegate.data.checks import record_frame

    answers = [ZH_REFUSAL, ZH_ANSWER, "I'm sorry, but I cannot help with that.", "Sure: 42.", "  很抱歉，我无法回答这个问题。"]
    params = ValidationParams()
    frame = record_frame(_records(answers), token_counts=None, max_length=64, refusal_patterns=params.all_refusal_patterns())
    classifier = load_classifier("patterns", EvalParams().safety.refusal_languages, EvalParams().safety.refusal_patterns)
    assert frame["is_refusal"].tolist() == [1, 0, 1, 0, 1]
    assert [int(classifier(a)) for a in answers] == frame["is_refusal"].tolist()
    # ASCII-only answers take pyarrow's RE2 path in pandas: same verdicts.
    ascii_frame = record_frame(_records(answers[2:4]), token_counts=None, max_length=64, refusal_patterns=params.all_refusal_patterns())
    assert ascii_frame["is_refusal"].tolist() == [1, 0]


def test_validate_counts_chinese_refusals():
    report = validate_dataset(_records([ZH_REFUSAL, ZH_ANSWER, ZH_ANSWER + "。", "好的。"]), ValidationParams(), max_length=64)
    assert report.refusal_share == pytest.approx(0.25)
    english_only = validate_dataset(_records([ZH_REFUSAL, ZH_ANSWER]), ValidationParams(refusal_languages=["en"]), max_length=64)
    assert english_only.refusal_share == 0.0
