"""Rollouts records -> switcher training examples, tokenised exactly as inference scores them.

The prompt is the released switcher prompt (core/prompts.py `switcher_prompt`) of the query
and the trace, as the user turn of the switcher's chat template with the generation prompt
(core/prompts.py `user_turn`), tokenised like the engine does (servers/engine/local.py `encode`).
The completion is one token: the label's digit as servers/choices.py `choice_token_ids` spells
it, the token whose probability the switcher's choice reads. TRL would tokenise prompt and
completion separately (and append EOS); pre-tokenised `input_ids` + `completion_mask` fix the
boundary to exactly that token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from switchgen.core.errors import ConfigError, InputError
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.core.records import read_rollouts_file
from switchgen.servers.choices import choice_token_ids
from switchgen.servers.engine.local import encode
from switchgen.training.rollouts import TIE


@dataclass(frozen=True)
class Example:
    prompt: str  # the rendered switcher prompt (what `choice_distribution` receives)
    input_ids: list[int]  # prompt tokens + the label's digit token
    completion_mask: list[int]  # 1 on the digit token only
    label: int
    n_candidates: int


def read_rollouts(paths: list[Path]) -> list[dict[str, Any]]:
    """Every finished record of the files (failed ones skipped); all files must share one candidate list."""
    records: list[dict[str, Any]] = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        for rec in read_rollouts_file(path):
            if records and rec["candidates"] != records[0]["candidates"]:
                raise InputError(
                    f"{path}: candidates {rec['candidates']} differ from {records[0]['candidates']}: "
                    "a switcher is trained for one chain (mix tasks, not chains)"
                )
            records.append(rec)
    if not records:
        raise InputError(f"no finished rollouts records in {', '.join(map(str, paths))}")
    return records


def recorded_base(records: list[dict[str, Any]]) -> str:
    """The switcher base the rollouts recorded (the aligned candidate's model); one for all files."""
    bases = sorted({r["base"] for r in records})
    if len(bases) != 1:
        raise InputError(f"the rollouts name several switcher bases {bases}: pass --base MODEL")
    return bases[0]


def digit_token(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], prompt: str, digit: int) -> int:
    """The token the switcher writes for `digit` after `prompt`: one `choice_token_ids` scores.

    The spelling the tokenizer itself gives prompt + digit when that only appends one token,
    else the plain digit's token (no leading space).
    """
    spelled = choice_token_ids(tokenizer, [str(digit)])[0]
    if not spelled:
        raise ConfigError(f"the switcher's tokenizer has no single token for the digit {digit}: it cannot be scored")
    joined = encode(tokenizer, prompt + str(digit))
    if len(joined) == len(prompt_ids) + 1 and joined[:-1] == prompt_ids and joined[-1] in spelled:
        return joined[-1]
    return spelled[0]


def make_example(tokenizer: PreTrainedTokenizerBase, record: dict[str, Any]) -> Example:
    """The switcher's prompt at the record's decision (query + trace) and its label digit."""
    n = len(record["candidates"])
    trace = record["trace"]
    prompt = user_turn(tokenizer, switcher_prompt(record["query"], [s["text"] for s in trace],
                                                  [int(s["index"]) for s in trace], n))
    ids = encode(tokenizer, prompt)
    label = int(record["label"])
    token = digit_token(tokenizer, ids, prompt, label)
    return Example(prompt, [*ids, token], [0] * len(ids) + [1], label, n)


def informative(record: dict[str, Any]) -> bool:
    """Whether the candidates' utilities differ at all: when every author leads to the same mean
    (typically every continuation failed), the label is the tie rule's, not something to learn."""
    means = [p["mean"] for p in record["patches"]]
    return max(means) - min(means) > TIE


def select(records: list[dict[str, Any]], min_margin: float, keep_uninformative: bool = False) -> list[dict[str, Any]]:
    """The records to train on: informative ones (unless `keep_uninformative`) whose margin is at
    least `min_margin` (0 keeps partial ties, e.g. two candidates that both end the answer right
    and one that does not)."""
    return [r for r in records if (keep_uninformative or informative(r)) and r["margin"] >= min_margin]


def split(items: list[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held out): a seeded shuffle; at least one held out when the fraction is above 0."""
    if not 0.0 <= eval_fraction < 1.0:
        raise InputError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_fraction == 0 else max(1, round(eval_fraction * len(items)))
    if n_eval >= len(items):
        raise InputError(f"{len(items)} examples leave none to train on after holding out {n_eval}")
    held = sorted(order[:n_eval])
    kept = sorted(order[n_eval:])
    return [items[i] for i in kept], [items[i] for i in held]
