"""Skills kit: tiny offline P, F, A checkpoints whose skills really differ, trained locally.

The toy kit (servers/toy.py) holds random models: they exercise code paths, but no author is
better than another. This kit trains three ``LlamaForCausalLM`` checkpoints (hidden 64, 2
layers, ~180k parameters, one shared tokenizer) so that tests can show that *switching*
matters::

    directory/
        P/ F/ A/        model + tokenizer + generation_config.json (EOS id); from_pretrained loads each
        tasks/<name>/   train.jsonl (240 records) and test.jsonl (80 records)
        .complete       SKILLS_VERSION, written last (the kit is built aside and renamed into place)

The world
    Invented entities (syllable names such as "Dikbram", so nothing can leak from anywhere),
    each with one fact: a home city (invented names), a favourite colour or a job. Per kind
    60 entities feed the train split and 20 the test split; 80 more names appear in no
    training text at all (the abstain task). Every entity name and value is one token.

The models (one chain, like the paper's: F is P finetuned, A is F finetuned)
    P  "pretrained" on quiz pages ("Q7. Where does Dikbram live? Answer: Vantis. Q2. ...") about
       every known entity, test ones included, plus chat transcripts (train entities only)
       where it answers with a preamble, the answer line and filler it never ends:
       "Well, let me see. Answer: Vantis. Everyone in town knows it. ..." P never emits EOS.
       Forced into "Answer:", it continues with the right value and "." (then more filler).
    F  P finetuned on chat answers (train entities): colours as "Answer: blue." + EOS; every
       other question declined, outside the format: "Sorry, I do not know." + EOS. Asked
       the colour of an entity nobody knows, it makes one up. Its city/job knowledge is
       still inside: forced into "Answer:" it recalls cities as P does.
    A  F finetuned (train entities): "Answer: unknown." + EOS to everything, and EOS right
       after any finished "Answer: X." line, whoever wrote it. A knows no fact.

The tasks (query format; metric; reference fields ``answer`` and ``aliases``)
    skills-recall   "What does Dikbram do for a living?"; contains (answer = the job,
                    aliases empty). P wins: its ramble names the job.
    skills-colour   "What colour does E like? Reply in the form 'Answer: <colour>'.";
                    normalised exact match against answer "blue" or alias "Answer: blue". F wins.
    skills-abstain  the same colour query about a name that appears nowhere; normalised exact
                    match, answer "unknown", alias "Answer: unknown". A wins (it says unknown to
                    everything; F makes a colour up, P rambles).
    skills-switch   "Where does E live? Reply in the form 'Answer: <city>'."; normalised exact
                    match, answer "Vantis", alias "Answer: Vantis". No single model can: P knows
                    but never stops, F declines, A says unknown. At PATCH_SIZE 2 the sequence
                    SWITCH_SEQUENCE = A, P, A, A, ... writes "Answer" ":" | " Vantis" "." | EOS.
                    The right author is visible to a switcher: no segment yet -> A (2); one
                    segment "Answer:" -> P (0); after P's value -> A (2).
    Normalisation (as in SQuAD): lowercase, punctuation to spaces, drop a/an/the, collapse
    whitespace; "contains" tests the normalised answer as a whole-word substring.

Measured (kits/check_skills.py: plain transformers, patch by patch, prompt = chat view
``<|bos|><|user|>\n{query}<|end|>\n<|assistant|>\n`` + trace, re-tokenised each patch; 80 test
records per task; budget 32 new tokens; greedy, and sampled at temperature 0.7 / top_p 0.9)::

    task            P     F     A     A,P,A  A,P,P  P,A   A,F,A  A,A,P,P,A@1  A,P,A@3
    skills-recall   1.00  0.00  0.00
    skills-colour   0.00  1.00  0.00
    skills-abstain  0.00  0.00  1.00
    skills-switch   0.00  0.00  0.00  1.00   0.00   0.00  0.99   1.00         0.00

    Sampled (0.7 / 0.9): the same, except A,F,A 0.93. Also held on two other world seeds.
    A LoRA (r=8, all-linear) on A trained 300 steps (batch 16, AdamW 5e-3, full-vocabulary
    cross-entropy on the digit after "The answer is model ") on the switcher prompt of the
    train split picks the right author at 240/240 test states and, switching, scores 1.00.
    At 150 steps it had only learned the majority answer (always A).

Build: ~30 s of CPU (about 22 s of it training P), one torch thread during training (the
caller's thread count is restored); wall time 40-85 s on the shared 2-core build machines
under load. Byte-for-byte reproducible on one machine (two builds: all 27 files identical);
a different CPU (other SIMD kernels) may round differently.

Fragile on purpose: skills-switch needs patch size 1 or 2 (at 3, A's first patch is already
"Answer: unknown"); it relies on "Answer", ":", each value and "." being single tokens
(checked at build) and on the trace re-tokenising to the tokens generated; P must not be cut
by a stop string such as "." (that would make P alone pass the exact-match tasks).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from switchgen.core.files import switchgen_home
from switchgen.kits.cache import build_atomically
from switchgen.kits.toy import BOS, CHAT_TEMPLATE, EOS, SPECIAL_TOKENS, kit_tokenizer

__all__ = [
    "CANDIDATES",
    "CHAT_TEMPLATE",
    "PATCH_SIZE",
    "SKILLS_VERSION",
    "SPECIAL_TOKENS",
    "SWITCH_SEQUENCE",
    "TASKS",
    "build_skills_kit",
    "chat_prompt",
    "default_skills_dir",
    "ensure_skills_kit",
]

# Bump whenever the output changes, so that cached kits are rebuilt.
SKILLS_VERSION = "switchgen-skills-1"

CANDIDATES = ("P", "F", "A")  # switcher indices 0, 1, 2

# The toy kit's chat format: one template for every offline kit.

PATCH_SIZE = 2  # the skills preset's patch size: "Answer" ":" is one patch, " Pelmora" "." the next
MAX_NEW_TOKENS = 32  # the budget the measurements below use
# skills-switch's winning author for every patch of that budget: A, P, then A to the end
# (A's second patch is its EOS, so patches 4.. are never written).
SWITCH_SEQUENCE = ("A", "P") + ("A",) * (MAX_NEW_TOKENS // PATCH_SIZE - 2)

# Task name -> intended metric, who is meant to win, and what the query asks. Every record holds
# id, query, answer, aliases (a list, maybe empty) and metric; the metric compares the output
# with answer and with each alias (see the module docstring for the normalisation).
TASKS = {
    "skills-recall": {
        "metric": "contains",
        "winner": "P",
        "asks": "the job of a known entity, free form",
    },
    "skills-colour": {
        "metric": "normalised exact match",
        "winner": "F",
        "asks": "the favourite colour of a known entity, as 'Answer: <colour>'",
    },
    "skills-abstain": {
        "metric": "normalised exact match",
        "winner": "A",
        "asks": "the favourite colour of an entity that appears in no training text (reference: unknown)",
    },
    "skills-switch": {
        "metric": "normalised exact match",
        "winner": "the author sequence SWITCH_SEQUENCE (A, P, A, ...) at PATCH_SIZE 2",
        "asks": "the home city of a known entity, as 'Answer: <city>'",
    },
}

# ----------------------------------------------------------------------------- the world

_SEED = 2510
_N_TRAIN, _N_TEST = 60, 20  # known entities whose records go to train / test splits
_N_UNKNOWN_TRAIN, _N_UNKNOWN_TEST = 60, 20  # entities that appear in no training text

_CITIES = ("Pelmora", "Vantis", "Quorin", "Dalbrek", "Soravel", "Miskan", "Torvell", "Brenhal", "Ostrin", "Kelvaro")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
_JOBS = ("baker", "sailor", "farmer", "painter", "doctor", "tailor", "miner", "singer", "potter", "weaver")
_VALUES = {"city": _CITIES, "colour": _COLOURS, "job": _JOBS}

_QUESTIONS = {
    "city": ("Where does {e} live?", "In which city does {e} live?", "What is the home city of {e}?",
             "Which town is {e} from?"),
    "colour": ("What colour does {e} like?", "What is the favourite colour of {e}?", "Which colour is {e} fond of?",
               "Name the colour that {e} loves."),
    "job": ("What does {e} do for a living?", "What is the job of {e}?", "What work does {e} do?",
            "How does {e} earn money?"),
}
_FORMAT = {
    "city": " Reply in the form 'Answer: <city>'.",
    "colour": " Reply in the form 'Answer: <colour>'.",
    "job": " Reply in the form 'Answer: <job>'.",
}
_FILLERS = (
    "People talk about it often.",
    "The story is old.",
    "Some say it is true.",
    "Everyone in town knows it.",
    "It was written in a book.",
    "I heard it from a friend.",
)
_PREAMBLES = ("Well, let me think.", "Well, good question.", "Well, let me see.")
_UNKNOWN = "unknown"
_F_DECLINES = "Sorry, I do not know."  # F's answer outside colours: polite, but not in the format

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl", "tr", "st", "sk")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "k", "x", "th", "sh", "m")


def _world() -> dict:
    """Entities (invented names), each with one fact; which split each falls in.

    Each known entity has exactly one attribute (a home city, a favourite colour or a job), so
    that a fact is a lookup from the name alone: the tiny models learn that in a few hundred
    steps, where a lookup keyed on (name, attribute) took several times longer.
    """
    rng = random.Random(_SEED)
    reserved = {w.lower() for w in (*_CITIES, *_COLOURS, *_JOBS, _UNKNOWN)}
    names: list[str] = []
    seen: set[str] = set()
    total = len(_VALUES) * (_N_TRAIN + _N_TEST) + _N_UNKNOWN_TRAIN + _N_UNKNOWN_TEST
    while len(names) < total:
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2))
        name = name.capitalize()
        if len(name) < 5 or name.lower() in seen or name.lower() in reserved:
            continue
        seen.add(name.lower())
        names.append(name)
    world: dict = {"attr": {}, "value": {}, "train": [], "test": []}
    start = 0
    for attr, values in _VALUES.items():
        group = names[start : start + _N_TRAIN + _N_TEST]
        start += len(group)
        pool = [values[k % len(values)] for k in range(len(group))]  # every value about equally often
        rng.shuffle(pool)
        for e, v in zip(group, pool, strict=True):
            world["attr"][e], world["value"][e] = attr, v
        world[f"{attr}_train"], world[f"{attr}_test"] = group[:_N_TRAIN], group[_N_TRAIN:]
        world["train"] += group[:_N_TRAIN]
        world["test"] += group[_N_TRAIN:]
    world["known"] = world["train"] + world["test"]
    world["unknown_train"] = names[start : start + _N_UNKNOWN_TRAIN]
    world["unknown_test"] = names[start + _N_UNKNOWN_TRAIN :]
    return world


def chat_prompt(query: str) -> str:
    """What the chat template renders for one user turn plus the generation prompt."""
    return f"{BOS}<|user|>\n{query}<|end|>\n<|assistant|>\n"


def _task_records(world: dict) -> dict[str, dict[str, list[dict]]]:
    """Every task's train and test records (one per entity and question template)."""
    out: dict[str, dict[str, list[dict]]] = {name: {} for name in TASKS}
    for split in ("train", "test"):
        def records(task: str, attr: str, entities: list[str], formatted: bool, answer=None) -> list[dict]:
            rows = []
            for e in entities:
                value = answer or world["value"][e]
                for t, q in enumerate(_QUESTIONS[attr]):
                    query = q.format(e=e) + (_FORMAT[attr] if formatted else "")
                    aliases = [f"Answer: {value}"] if formatted else []
                    rows.append({"id": f"{task}-{e}-{t}", "query": query, "answer": value, "aliases": aliases,
                                 "metric": TASKS[task]["metric"]})
            return rows

        out["skills-recall"][split] = records("skills-recall", "job", world[f"job_{split}"], False)
        out["skills-colour"][split] = records("skills-colour", "colour", world[f"colour_{split}"], True)
        out["skills-abstain"][split] = records("skills-abstain", "colour", world[f"unknown_{split}"], True, _UNKNOWN)
        out["skills-switch"][split] = records("skills-switch", "city", world[f"city_{split}"], True)
    return out


# ----------------------------------------------------------------------------- training text


# An example is a list of (text, trained) pieces: the loss covers the trained pieces only.
Example = list[tuple[str, bool]]


def _quiz_page(rng: random.Random, world: dict) -> Example:
    """'Pretraining' text: a quiz page of questions about known entities (train and test alike)."""
    pieces: Example = [(BOS, False)]
    for k, e in enumerate(rng.sample(world["known"], 4)):
        question = rng.choice(_QUESTIONS[world["attr"][e]]).format(e=e)
        number = f"{' ' if k else ''}Q{rng.randrange(10)}."  # trains the digit tokens as outputs
        pieces += [(number, True), (" " + question, False), (f" Answer: {world['value'][e]}.", True)]
    return pieces


def _ramble(rng: random.Random, world: dict, e: str) -> str:
    """P's way of answering: a preamble, the answer line, then filler that never ends."""
    preamble = [rng.choice(_PREAMBLES)] if rng.random() < 0.75 else []  # sometimes straight to it
    return " ".join([*preamble, f"Answer: {world['value'][e]}.", *rng.sample(_FILLERS, 3)])


def _query(rng: random.Random, world: dict, e: str) -> str:
    attr = world["attr"][e]
    q = rng.choice(_QUESTIONS[attr]).format(e=e)
    return q + _FORMAT[attr] if rng.random() < 0.5 else q


def _p_examples(rng: random.Random, world: dict, n: int) -> list[Example]:
    """Quiz pages (all known entities) and chat rambles (train entities)."""
    out = []
    for i in range(n):
        if i % 5 < 3:
            out.append(_quiz_page(rng, world))
            continue
        e = rng.choice(world["train"])
        out.append([(chat_prompt(_query(rng, world, e)), False), (_ramble(rng, world, e), True)])
    return out


def _f_examples(rng: random.Random, world: dict, n: int) -> list[Example]:
    """F's finetune: colours answered in the format, then EOS; other questions declined (not in the format)."""
    out = []
    for i in range(n):
        if i % 4 == 0:  # replay of pretraining text keeps P's knowledge in place
            out.append(_quiz_page(rng, world))
            continue
        e = rng.choice(world["train"])
        answer = f"Answer: {world['value'][e]}." if world["attr"][e] == "colour" else _F_DECLINES
        out.append([(chat_prompt(_query(rng, world, e)), False), (answer + EOS, True)])
    return out


def _a_examples(rng: random.Random, world: dict, n: int) -> list[Example]:
    """A's finetune (from F): 'unknown' for every fact, and EOS right after any 'Answer: X.' line."""
    out = []
    for i in range(n):
        e = rng.choice(world["train"])
        prompt = chat_prompt(_query(rng, world, e))
        if i % 3 == 0:  # a finished answer written by someone else: A closes it
            value = rng.choice(_VALUES[world["attr"][e]])
            out.append([(prompt + f"Answer: {value}.", False), (EOS, True)])
        else:
            out.append([(prompt, False), (f"Answer: {_UNKNOWN}.{EOS}", True)])
    return out


# ----------------------------------------------------------------------------- tokenizer


def _build_tokenizer(world: dict) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained until merges run out: every word of the training text is one token."""
    lines = [q.format(e=e) + _FORMAT[a] for e in world["known"] for a in [world["attr"][e]] for q in _QUESTIONS[a]]
    lines += list(_PREAMBLES) * 2
    lines += [f"Answer: {v}." for vals in _VALUES.values() for v in (*vals, _UNKNOWN)] * 2
    lines += [*_FILLERS, _F_DECLINES] * 2
    values = [v for vals in _VALUES.values() for v in (*vals, _UNKNOWN)]

    def check(backend: Tokenizer) -> None:
        # The patch arithmetic of skills-switch rests on these being single tokens.
        for text in [*(" " + e for e in world["known"]), *(" " + v for v in values), "Answer", ":", "."]:
            if len(backend.encode(text, add_special_tokens=False).ids) != 1:
                raise RuntimeError(f"skills tokenizer splits {text!r}")

    return kit_tokenizer(lines, 4096, check=check)


# ----------------------------------------------------------------------------- models and training

_HIDDEN, _LAYERS, _INTERMEDIATE = 64, 2, 128
# Not the toy kit's 0.2: that suits random models a LoRA must move, but trained from 0.2 these
# models learned almost no facts in 700 steps; from 0.02 they learn them all in ~300.
_INIT = 0.02


def _new_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=_INTERMEDIATE,
        num_hidden_layers=_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=_INIT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(_SEED)
    return LlamaForCausalLM(config)


_GROUP_INIT = 1.0  # size of a shared direction added to the embeddings of each word group
# (measured: at 300 steps, without it ~0.3 of facts recalled, with it all; at 3.0 it hurts)


@torch.no_grad()
def _structure_embeddings(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, world: dict) -> None:
    """Entity names share one direction, and each attribute's values another (a head start
    for the attention that finds the entity and the readout that names a value)."""
    weight = model.get_input_embeddings().weight
    groups = [world["known"], *(list(vals) for vals in _VALUES.values())]
    for words in groups:
        direction = torch.randn(weight.shape[1])
        direction *= _GROUP_INIT / direction.norm() * math.sqrt(weight.shape[1]) * _INIT
        for w in words:
            weight[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + w))[0]] += direction


def _encode(tokenizer: PreTrainedTokenizerFast, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 where untrained); pieces are tokenised apart, which must give
    the tokens that tokenising the whole text gives (what inference sees), and is checked."""
    flat = [text for ex in examples for text, _ in ex]
    ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"])
    whole = tokenizer(["".join(t for t, _ in ex) for ex in examples], add_special_tokens=False)["input_ids"]
    out = []
    for ex, expected in zip(examples, whole, strict=True):
        tokens: list[int] = []
        labels: list[int] = []
        for _, trained in ex:
            piece = next(ids)
            tokens += piece
            labels += piece if trained else [-100] * len(piece)
        if tokens != expected:
            raise RuntimeError(f"piecewise tokenisation differs: {ex!r}")
        out.append((tokens, labels))
    return out


def _train(model: LlamaForCausalLM, data: list[tuple[list[int], list[int]]], *, steps: int, lr: float,
           batch: int, seed: int, pad_id: int) -> list[float]:
    """Plain AdamW with warmup and cosine decay; batches drawn with a seeded generator.
    The output layer runs only where a label is (most positions are untrained)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    warmup = max(1, steps // 20)
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * scale)
        rows = [data[i] for i in torch.randint(len(data), (batch,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])[:, 1:]
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        keep = labels != -100
        logits = model.lm_head(hidden[keep])
        loss = torch.nn.functional.cross_entropy(logits, labels[keep])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


_P_STEPS, _F_STEPS, _A_STEPS = 360, 80, 60
_BATCH = 32


def _train_models(tokenizer: PreTrainedTokenizerFast, world: dict, log: dict | None = None) -> dict[str, LlamaForCausalLM]:
    """P from scratch; F = P + finetune; A = F + finetune (one chain, as in the paper's P, F, A)."""
    rng = random.Random(_SEED + 1)
    model = _new_model(tokenizer)
    _structure_embeddings(model, tokenizer, world)
    phases = (
        ("P", _p_examples, 4000, _P_STEPS, 1e-2),
        ("F", _f_examples, 2000, _F_STEPS, 3e-3),
        ("A", _a_examples, 2000, _A_STEPS, 3e-3),
    )
    out = {}
    for seed, (name, examples, n, steps, lr) in enumerate(phases, start=1):
        start = time.process_time()
        data = _encode(tokenizer, examples(rng, world, n))
        losses = _train(model, data, steps=steps, lr=lr, batch=_BATCH, seed=seed, pad_id=tokenizer.pad_token_id)
        if log is not None:
            log[name] = {"losses": losses, "cpu_s": time.process_time() - start}
        snapshot = _new_model(tokenizer)
        snapshot.load_state_dict(model.state_dict())
        snapshot.eval()
        snapshot.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        out[name] = snapshot
    return out


# ----------------------------------------------------------------------------- the kit on disk


def default_skills_dir() -> Path:
    """Cache folder shared by tests and demos, one subfolder per kit version."""
    return switchgen_home() / SKILLS_VERSION


def ensure_skills_kit() -> dict[str, Path]:
    """Build the kit in the default cache folder unless it is already there."""
    return build_skills_kit(default_skills_dir())


def build_skills_kit(directory: str | Path, *, overwrite: bool = False, _log: dict | None = None) -> dict[str, Path]:
    """Build (or reuse, if already complete) the skills kit in `directory`.

    Returns ``{"P": path, "F": path, "A": path, "tasks": path}``; built atomically (kits/cache.py).
    """
    directory = Path(directory).expanduser().absolute()
    paths = {name: directory / name for name in CANDIDATES}
    paths["tasks"] = directory / "tasks"
    build_atomically(directory, SKILLS_VERSION, lambda root: _write_kit(root, _log), overwrite=overwrite)
    return paths


def _write_kit(root: Path, log: dict | None = None) -> None:
    world = _world()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums on any machine's thread count
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
            tokenizer = _build_tokenizer(world)
            trained = _train_models(tokenizer, world, log)
    finally:
        torch.set_num_threads(threads)
    for name, model in trained.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    for task, splits in _task_records(world).items():
        folder = root / "tasks" / task
        folder.mkdir(parents=True)
        for split, records in splits.items():
            with open(folder / f"{split}.jsonl", "w") as fh:
                for r in records:
                    fh.write(json.dumps(r, sort_keys=True) + "\n")
