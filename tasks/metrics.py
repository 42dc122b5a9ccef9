"""Metrics: how an output is scored against a record's reference.

Each per-example metric is `fn(output, reference) -> float`; a reference may be a list of aliases,
where the best score over them counts. `Metric` wraps one for a whole run (`score` is batched;
the reward model loads once in `make_metric`). Ranges are documented per metric and exposed as
`Metric.range`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PerExample = Callable[[str, Any], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", str(text).lower().translate(_PUNCT))
    return " ".join(text.split())


_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def answer_span(output: str) -> str:
    """The part of an output that states the answer: after the last "answer is"/"Answer:", else its first non-empty line."""
    found = _ANSWER_IS.findall(output)
    if found:
        return found[-1].strip().splitlines()[0]
    for line in output.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _aliases(reference: Any) -> list[str]:
    """A reference as a flat list of alias strings (several reference fields may each hold a list)."""
    if isinstance(reference, list | tuple):
        return [alias for r in reference for alias in _aliases(r)]
    return [str(reference)]


def exact_match(output: str, reference: Any) -> float:
    """1.0 if the normalised output equals a normalised alias, else 0.0 (SQuAD's exact match). Range [0, 1]."""
    text = normalize(output)
    return float(any(text == normalize(alias) for alias in _aliases(reference)))


def answer_exact_match(output: str, reference: Any) -> float:
    """1.0 if the stated answer (see `answer_span`), normalised, equals a normalised alias, else 0.0:
    exact match for answers that come after reasoning. Range [0, 1]."""
    span = normalize(answer_span(output))
    return float(any(span == normalize(alias) for alias in _aliases(reference)))


def contains(output: str, reference: Any) -> float:
    """1.0 if a normalised alias occurs in the normalised output (on word boundaries), else 0.0. Range [0, 1]."""
    text = f" {normalize(output)} "
    return float(any(normalize(alias) and f" {normalize(alias)} " in text for alias in _aliases(reference)))


def token_f1(output: str, reference: Any) -> float:
    """Token-level F1 between the normalised output and the best alias (SQuAD/PopQA style). Range [0, 1]."""
    pred = normalize(output).split()
    best = 0.0
    for alias in _aliases(reference):
        gold = normalize(alias).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold or not common:
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def _to_float(text: str) -> float | None:
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def final_number(text: str) -> float | None:
    """The answer's number, gsm8k style: after the last "####", else after the last "answer is", else the last number."""
    if "####" in text:
        numbers = _NUMBER.findall(text.rsplit("####", 1)[1])
        if numbers:
            return _to_float(numbers[0])
    found = _ANSWER_IS.findall(text)
    if found and _NUMBER.findall(found[-1]):
        return _to_float(_NUMBER.findall(found[-1])[0])
    numbers = _NUMBER.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def numeric(output: str, reference: Any) -> float:
    """1.0 if the output's final number (see `final_number`) equals the reference's (to 1e-6), else 0.0. Range [0, 1]."""
    got = final_number(output)
    if got is None:
        return 0.0
    for alias in _aliases(reference):
        want = final_number(alias)
        if want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6):
            return 1.0
    return 0.0


_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?i:is|:)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])")
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[).:](?!\w)|\s*(?:\n|$))")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")


def choice_letter(output: str) -> str | None:
    """The letter an output picks: "the answer is (C)" / "Answer: C" (the last such), else a leading
    "C." / "(C)" / "C)" / a lone "C" line, else the last "(C)" in the text."""
    text = output.strip()
    found = _ANSWER_LETTER.findall(text)
    if found:
        return found[-1]
    leading = _LEADING_LETTER.match(text)
    if leading:
        return leading.group(1)
    found = _PAREN_LETTER.findall(text)
    return found[-1] if found else None


def choice(output: str, reference: Any) -> float:
    """1.0 if the letter the output picks (see `choice_letter`) is the reference letter, else 0.0. Range [0, 1]."""
    letter = choice_letter(output)
    return float(letter is not None and letter in {a.strip().upper() for a in _aliases(reference)})


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _normalize_math(answer: str) -> str:
    answer = answer.strip().strip("$").rstrip(".")
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("dfrac", "frac"),
                     ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", ""), ("\\$", "")):
        answer = answer.replace(old, new)
    answer = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", answer)
    answer = re.sub(r"\s+", "", answer)
    if re.fullmatch(r"-?\d[\d,]*(\.\d+)?", answer):
        value = _to_float(answer)
        answer = f"{value:g}" if value is not None else answer
    return answer


def math_answer(output: str, reference: Any) -> float:
    """1.0 if the output's last \\boxed{} answer (else its final number) equals the reference after LaTeX
    normalisation (spacing, \\left/\\right, dfrac, units of degrees and percent), else 0.0. Range [0, 1]."""
    got = last_boxed(output)
    if got is None:
        number = final_number(output)
        if number is None:
            return 0.0
        got = f"{number:g}"
    got = _normalize_math(got)
    return float(any(got == _normalize_math(last_boxed(a) or a) for a in _aliases(reference)))


@dataclass(frozen=True)
class MetricInfo:
    fn: PerExample
    range: tuple[float, float]
    description: str


METRICS: dict[str, MetricInfo] = {
    "exact_match": MetricInfo(exact_match, (0.0, 1.0), "normalised exact match of the whole output"),
    "answer_exact_match": MetricInfo(answer_exact_match, (0.0, 1.0), "normalised exact match of the stated answer"),
    "numeric": MetricInfo(numeric, (0.0, 1.0), "final number equals the reference's (gsm8k)"),
    "choice": MetricInfo(choice, (0.0, 1.0), "multiple-choice letter"),
    "f1": MetricInfo(token_f1, (0.0, 1.0), "token F1, best over aliases (popqa)"),
    "contains": MetricInfo(contains, (0.0, 1.0), "an alias occurs in the output"),
    "math": MetricInfo(math_answer, (0.0, 1.0), "last \\boxed{} answer equals the reference (MATH)"),
}


class Metric:
    """A metric for one run: `score(outputs, records)` -> one float per output, each within `range`."""

    def __init__(self, name: str, fn: PerExample, range: tuple[float, float], description: str = "") -> None:
        self.name, self.fn, self.range, self.description = name, fn, range, description

    def score(self, outputs: Sequence[str], records: Sequence[dict[str, Any]]) -> list[float]:
        if len(outputs) != len(records):
            raise ValueError(f"{len(outputs)} outputs for {len(records)} records")
        return [float(self.fn(output or "", record["reference"])) for output, record in zip(outputs, records, strict=True)]

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, range={self.range})"
