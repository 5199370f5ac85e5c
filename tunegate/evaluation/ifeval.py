"""Verifiable instruction following: checkers for IFEval's 25 instruction types.

Written from IFEval's published definitions (Zhou et al., 2023, "Instruction-Following
Evaluation for Large Language Models", and its reference implementation), including strict
and loose scoring and prompt-level vs instruction-level accuracy. Nothing needs a network:
language detection uses ``langdetect`` with a fixed seed, and word tokenisation for
``capital_word_frequency`` is a regex instead of NLTK's punkt model (which would need a
download); this is the one documented deviation.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Checker = Callable[[str, dict[str, Any], str], bool]
CHECKERS: dict[str, Checker] = {}


def checker(instruction_id: str):
    def register(fn: Checker) -> Checker:
        CHECKERS[instruction_id] = fn
        return fn

    return register


def _relation(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"relation must be 'less than' or 'at least', got {relation!r}")


def _detect_language(text: str) -> str | None:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect is randomised; the seed makes it deterministic
    try:
        return detect(text)
    except LangDetectException:
        return None  # IFEval counts an undetectable language as followed


# --- sentences, words (instructions_util) ----------------------------------------------------

_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """IFEval's rule-based sentence splitter."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda match: "<prd>" * len(match.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>")
    text = text.replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_words(text: str) -> int:
    """Words as IFEval counts them (NLTK's RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


# --- the checkers ------------------------------------------------------------------------------


@checker("change_case:english_lowercase")
def _lowercase(value, kw, prompt):
    return value.islower() and _detect_language(value) in ("en", None)


@checker("change_case:english_capital")
def _capital(value, kw, prompt):
    return value.isupper() and _detect_language(value) in ("en", None)


@checker("change_case:capital_word_frequency")
def _capital_words(value, kw, prompt):
    words = re.findall(r"\w+|[^\w\s]", value)  # stands in for nltk.word_tokenize (no punkt download)
    capital = [w for w in words if w.isupper()]
    return _relation(len(capital), kw["capital_relation"], int(kw["capital_frequency"]))


@checker("punctuation:no_comma")
def _no_comma(value, kw, prompt):
    return not re.search(r"\,", value)


@checker("detectable_format:json_format")
def _json(value, kw, prompt):
    value = (
        value.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


@checker("detectable_format:title")
def _title(value, kw, prompt):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


@checker("detectable_format:number_bullet_lists")
def _bullets(value, kw, prompt):
    stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(stars) + len(dashes) == int(kw["num_bullets"])


@checker("detectable_format:number_highlighted_sections")
def _highlights(value, kw, prompt):
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
    return count >= int(kw["num_highlights"])


@checker("detectable_format:multiple_sections")
def _sections(value, kw, prompt):
    sections = re.split(r"\s?" + kw["section_spliter"] + r"\s?\d+\s?", value)
    return len(sections) - 1 >= int(kw["num_sections"])


@checker("detectable_format:constrained_response")
def _constrained(value, kw, prompt):
    value = value.strip()
    return any(option in value for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


@checker("length_constraints:number_words")
def _words(value, kw, prompt):
    return _relation(count_words(value), kw["relation"], int(kw["num_words"]))


@checker("length_constraints:number_sentences")
def _sentences(value, kw, prompt):
    return _relation(len(split_into_sentences(value)), kw["relation"], int(kw["num_sentences"]))


@checker("length_constraints:number_paragraphs")
def _paragraphs(value, kw, prompt):
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == int(kw["num_paragraphs"])


@checker("length_constraints:nth_paragraph_first_word")
def _nth_paragraph(value, kw, prompt):
    paragraphs = re.split(r"\n\n", value)
    count = sum(1 for p in paragraphs if p.strip())
    nth = int(kw["nth_paragraph"])
    if nth > count:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first += letter.lower()
    return count == int(kw["num_paragraphs"]) and first == kw["first_word"].lower()


@checker("keywords:existence")
def _existence(value, kw, prompt):
    return all(re.search(k, value, flags=re.IGNORECASE) for k in kw["keywords"])


@checker("keywords:forbidden_words")
def _forbidden(value, kw, prompt):
    return not any(re.search(r"\b" + w + r"\b", value, flags=re.IGNORECASE) for w in kw["forbidden_words"])


@checker("keywords:frequency")
def _frequency(value, kw, prompt):
    count = len(re.findall(kw["keyword"], value, flags=re.IGNORECASE))
    return _relation(count, kw["relation"], int(kw["frequency"]))


@checker("keywords:letter_frequency")
def _letters(value, kw, prompt):
    letters = collections.Counter(value.lower())
    return _relation(letters[kw["letter"].lower()], kw["let_relation"], int(kw["let_frequency"]))


@checker("language:response_language")
def _language(value, kw, prompt):
    detected = _detect_language(value)
    return detected is None or detected == kw["language"]


@checker("startend:end_checker")
def _end(value, kw, prompt):
    return value.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


@checker("startend:quotation")
def _quotation(value, kw, prompt):
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


@checker("detectable_content:postscript")
def _postscript(value, kw, prompt):
    marker = kw["postscript_marker"]
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, value.lower(), flags=re.MULTILINE))


@checker("detectable_content:number_placeholders")
def _placeholders(value, kw, prompt):
    return len(re.findall(r"\[.*?\]", value)) >= int(kw["num_placeholders"])


@checker("combination:repeat_prompt")
def _repeat(value, kw, prompt):
    return value.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


@checker("combination:two_responses")
def _two(value, kw, prompt):
    valid = []
    parts = value.split("******")
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


# --- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IFPrompt:
    key: str
    prompt: str
    instruction_ids: list[str]
    kwargs: list[dict[str, Any]]


@dataclass
class IFResult:
    key: str
    prompt: str
    response: str
    strict: list[bool] = field(default_factory=list)
    loose: list[bool] = field(default_factory=list)
    instruction_ids: list[str] = field(default_factory=list)


def loose_variants(response: str) -> list[str]:
    """IFEval's loose transformations: drop the first and/or last line, remove '*'."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    revised = response.replace("*", "")
    return [
        response, revised, remove_first, remove_last, remove_both,
        remove_first.replace("*", ""), remove_last.replace("*", ""), remove_both.replace("*", ""),
    ]


def _clean_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def follows(instruction_id: str, response: str, kwargs: dict[str, Any], prompt: str) -> tuple[bool, bool]:
    """(strict, loose) for one instruction."""
    check = CHECKERS[instruction_id]
    kwargs = _clean_kwargs(kwargs)
    if instruction_id == "combination:repeat_prompt":
        kwargs.setdefault("prompt_to_repeat", prompt)
    strict = bool(response.strip()) and check(response, kwargs, prompt)
    loose = any(v.strip() and check(v, kwargs, prompt) for v in loose_variants(response))
    return strict, loose


def score_prompt(item: IFPrompt, response: str) -> IFResult:
    result = IFResult(item.key, item.prompt, response, instruction_ids=list(item.instruction_ids))
    for instruction_id, kwargs in zip(item.instruction_ids, item.kwargs):
        strict, loose = follows(instruction_id, response, kwargs, item.prompt)
        result.strict.append(strict)
        result.loose.append(loose)
    return result


def accuracy(results: list[IFResult]) -> dict[str, float]:
    """Prompt-level and instruction-level accuracy, strict and loose."""
    if not results:
        return {}
    instructions = sum(len(r.strict) for r in results)
    return {
        "prompt_level_strict": sum(all(r.strict) for r in results) / len(results),
        "prompt_level_loose": sum(all(r.loose) for r in results) / len(results),
        "instruction_level_strict": sum(sum(r.strict) for r in results) / max(instructions, 1),
        "instruction_level_loose": sum(sum(r.loose) for r in results) / max(instructions, 1),
    }


def read_ifeval(path: Path, supported_only: bool = True) -> list[IFPrompt]:
    """Read IFEval's input JSONL ({key, prompt, instruction_id_list, kwargs})."""
    items = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        ids = row["instruction_id_list"]
        if supported_only and not all(i in CHECKERS for i in ids):
            continue
        items.append(IFPrompt(str(row["key"]), row["prompt"], ids, [k or {} for k in row["kwargs"]]))
    return items
