"""IFEval checkers, each against cases written from IFEval's published definitions."""

from pathlib import Path

import pytest

from tunegate.evaluation.ifeval import CHECKERS, IFPrompt, accuracy, follows, loose_variants, read_ifeval, score_prompt, split_into_sentences

IFEVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval" / "ifeval_input_data.jsonl"

CASES = [
    # (instruction id, kwargs, response, strict expected)
    ("change_case:english_lowercase", {}, "this is all lowercase english text about a cat.", True),
    ("change_case:english_lowercase", {}, "This has a capital letter in English text.", False),
    ("change_case:english_capital", {}, "THIS IS ALL CAPITAL ENGLISH TEXT ABOUT A DOG.", True),
    ("change_case:english_capital", {}, "THIS IS MOSTLY capital ENGLISH TEXT.", False),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2}, "The CAT and the DOG", True),
    ("change_case:capital_word_frequency", {"capital_relation": "less than", "capital_frequency": 2}, "The CAT and the DOG", False),
    ("punctuation:no_comma", {}, "No commas here at all.", True),
    ("punctuation:no_comma", {}, "One, comma.", False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, "{'a': 1}", False),
    ("detectable_format:title", {}, "<<My Title>>\nText", True),
    ("detectable_format:title", {}, "<< >>\nText", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two\nthree", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n* three", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and ** **", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\na\nSection 2\nb", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 3}, "SECTION 1 a SECTION 2 b", False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "Yes.", False),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}, "one two three", True),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 3}, "one two three", False),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "One. Two!", True),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3}, "Mr. Smith went. He came back.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "First.\n***\n\n***\nThird.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "Intro here.\n\n\"Then, more.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "Intro.\n\nAfter that.", False),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "A Cat met a DOG.", True),
    ("keywords:existence", {"keywords": ["cat", "bird"]}, "A cat met a dog.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "A badge is fine.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "That is Bad.", False),
    ("keywords:frequency", {"keyword": "cat", "relation": "at least", "frequency": 2}, "cat CAT dog", True),
    ("keywords:frequency", {"keyword": "cat", "relation": "less than", "frequency": 2}, "cat cat", False),
    ("keywords:letter_frequency", {"letter": "z", "let_relation": "at least", "let_frequency": 2}, "Zoo zebra", True),
    ("keywords:letter_frequency", {"letter": "z", "let_relation": "less than", "let_frequency": 2}, "Zoo zebra", False),
    ("language:response_language", {"language": "en"}, "This is a sentence written in plain English for the test.", True),
    ("language:response_language", {"language": "de"}, "This is a sentence written in plain English for the test.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\"", True),
    ("startend:end_checker", {"end_phrase": "Bye"}, "Bye now", False),
    ("startend:quotation", {}, ' "quoted" ', True),
    ("startend:quotation", {}, '"', False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\n\nP.S. see you", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] only", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi! Say hi.", False),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
]


@pytest.mark.parametrize("instruction_id, kwargs, response, expected", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_checker(instruction_id, kwargs, response, expected):
    strict, loose = follows(instruction_id, response, kwargs, prompt="Say hi.")
    assert strict is expected
    if expected:
        assert loose, "loose scoring never rejects what strict accepts"


def test_all_25_instruction_types_are_implemented():
    assert len(CHECKERS) == 25


def test_loose_scoring_forgives_a_preamble_and_markdown():
    response = "Sure, here it is:\n**my answer is yes.**"
    assert follows("detectable_format:constrained_response", response, {}, "")[0] is False
    strict, loose = follows("startend:quotation", 'Here you go:\n"quoted"', {}, "")
    assert (strict, loose) == (False, True)
    assert len(loose_variants("a\nb\nc")) == 8 and "b" in loose_variants("a\nb\nc")


def test_empty_response_never_follows():
    assert follows("punctuation:no_comma", "   ", {}, "") == (False, False)


def test_sentence_splitter():
    assert split_into_sentences("Mr. Smith went home. He slept! Did he? Yes...") == ["Mr. Smith went home.", "He slept!", "Did he?", "Yes..."]


def test_prompt_and_instruction_level_accuracy():
    item = IFPrompt("1", "p", ["punctuation:no_comma", "keywords:existence"], [{}, {"keywords": ["cat"]}])
    results = [score_prompt(item, "a cat"), score_prompt(item, "a, dog")]
    assert accuracy(results) == {
        "prompt_level_strict": 0.5, "prompt_level_loose": 0.5,
        "instruction_level_strict": 0.5, "instruction_level_loose": 0.5,
    }


def test_ifeval_file_scores_offline_and_deterministically():
    if not IFEVAL.is_file():
        pytest.skip(f"{IFEVAL} missing")
    items = read_ifeval(IFEVAL)
    assert len(items) == 541  # every prompt is covered by an implemented checker
    responses = [item.prompt.upper() if i % 2 else item.prompt.lower() for i, item in enumerate(items)]
    first = accuracy([score_prompt(it, r) for it, r in zip(items, responses)])
    second = accuracy([score_prompt(it, r) for it, r in zip(items, responses)])
    assert first == second
    assert 0 < first["instruction_level_loose"] < 1
    assert first["instruction_level_loose"] >= first["instruction_level_strict"]
