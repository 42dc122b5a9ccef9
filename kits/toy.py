"""Tiny offline checkpoints so tests and demos never need the model hub.

``build_toy_models(directory)`` writes four random ``LlamaForCausalLM`` checkpoints
(~120k parameters each) that share one byte-level BPE tokenizer trained on the small
English text embedded below::

    directory/
        P/          "pretrained" candidate   (seed 1)
        F/          "finetuned" candidate    (seed 2)
        A/          "aligned" candidate      (seed 3)
        switcher/   model that picks a candidate (seed 4)
        .complete   version marker, written last

Each folder loads offline with ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)``, and holds a ``generation_config.json`` with the
EOS id. Building the kit takes a fraction of a second on CPU (plus the import of
transformers) and is byte-for-byte reproducible: the same seeds give the same weights.

Tokenizer
    Byte-level BPE (any text encodes). Every digit "0".."9" is one token, and so is
    each digit with a leading space (" 7" is the single token "Ġ7"); no token holds two
    digits, so numbers tokenize digit by digit. Plain encoding adds ``<|bos|>`` at the
    start, like Llama: ``tokenizer("hi")`` gives ``[bos, ...]``. ``apply_chat_template``
    does not add it twice (the template renders ``bos_token`` itself and transformers
    tokenizes the rendered chat without special tokens); when you encode rendered chat
    text yourself, pass ``add_special_tokens=False``. Padding is on the left.

Chat template
    ``bos_token`` then, per message, ``<|role|>\\n`` + content + ``<|end|>\\n``; with
    ``add_generation_prompt=True`` it ends with ``<|assistant|>\\n``. With
    ``continue_final_message=True`` the text stops right after the last message's content.

End of sequence (the models are random, so EOS is engineered)
    A few weights are set by hand (see `_steer_special_tokens`) so that no model ever
    emits a special token, except that the aligned model "A" emits EOS. Measured with
    greedy decoding on 40 varied chat prompts:

    * P, F and the switcher never stop: they run to the token budget (checked to 512).
    * A never stops within the first ~13 tokens after ``<|assistant|>`` and usually
      stops after 15-70 (median ~26; always within 80 on those prompts). Sampling at
      temperature 1 stops later (median ~50) and now and then runs past 200 tokens.
      A continuation (``continue_final_message``) may stop sooner, because the
      ``<|assistant|>`` header is already that many tokens back. A cannot end while a
      special token lies ~1000-2000 tokens back (the detecting head's RoPE frequency
      wraps around), so keep its contexts under ~1000 tokens where ending matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from switchgen.core.files import switchgen_home
from switchgen.kits.cache import build_atomically

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "SWITCHER",
    "TOY_CANDIDATES",
    "TOY_VERSION",
    "build_toy_models",
    "default_toy_dir",
    "ensure_toy_models",
]

TOY_CANDIDATES = ("P", "F", "A")  # pretrained, finetuned, aligned
SWITCHER = "switcher"

# Bump whenever the output changes, so that cached kits are rebuilt.
TOY_VERSION = "switchgen-toy-2"

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_SEEDS = {"P": 1, "F": 2, "A": 3, SWITCHER: 4}
_VOCAB_SIZE = 768  # an upper bound: the corpus below runs out of merges at 667 tokens

# Output steering of special tokens (see _steer_special_tokens). Ordinary logits spread
# by ~1.6 with a maximum of ~5: a -3 * 4 = -12 bias silences a special token.
_DIM_BIAS, _DIM_SPECIAL, _DIM_GATE = 63, 62, 61  # residual dimensions with fixed jobs
_BIAS_FEATURE = 4.0  # size of the constant bias feature after the final norm
_SPECIAL_DELTA = -3.0  # static bias of special tokens, in units of _BIAS_FEATURE
_EOS_DELTA = 0.4  # static bias of A's EOS: tuned by hand on chat prompts, see the module docstring
_EOS_WINDOW = 16  # A's EOS is blocked while a special token is this close
_GATE_LOGITS = 15.0  # how hard the window blocks EOS
_WINDOW_HEAD, _WINDOW_PAIR = 3, 5  # layer-0 head and RoPE frequency pair (theta ~ 0.0032)
_WINDOW_SHARPNESS = 500.0  # attention score scale of the window head

# Training text for the tokenizer; also used to measure each model's residual scale.
# Numbers appear only as single digits separated by spaces: the BPE learns " 7" but
# never a multi-digit token.
_CORPUS = """\
The model reads the question and writes an answer. The final answer is 4.
Question: What is 2 plus 3? Answer: The answer is 5.
Question: What is 7 minus 4? Answer: The answer is 3.
Question: How many legs does a cat have? Answer: A cat has 4 legs.
Question: What is 3 times 3? Answer: 3 times 3 is 9. The final answer is 9.
Question: What is 8 divided by 2? Answer: 8 divided by 2 is 4. The final answer is 4.
Question: Is the sky blue? Answer: Yes, on a clear day the sky is blue.
Question: What color is grass? Answer: Grass is usually green.
Let us think step by step. First we add the numbers, then we check the result.
Step 1: write down the numbers. Step 2: add them. Step 3: state the final answer.
The digits are 0 1 2 3 4 5 6 7 8 9 and they can be counted one by one.
Count with me: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9. Then count back: 9 8 7 6 5 4 3 2 1 0.
The numbers 1 3 5 7 9 are odd and the numbers 0 2 4 6 8 are even.
If you have 5 apples and eat 2, you have 3 apples left. The final answer is 3.
A small model can still learn simple patterns, but a large model knows more facts.
The pretrained model continues text. The finetuned model follows instructions.
The aligned model is helpful, honest and harmless, and it stops when it is done.
The switcher decides which model should write the next token of the answer.
User: Can you help me with my homework? Assistant: Of course. What is the question?
User: Tell me a short story. Assistant: Once upon a time there was a little robot.
The little robot wanted to learn how to write poems about the sea and the stars.
Every morning it read a new book, and every evening it wrote a new line.
User: Please summarize the text. Assistant: The text is about a robot that learns.
User: Translate "hello" into French. Assistant: In French, hello is "bonjour".
User: What is the capital of France? Assistant: The capital of France is Paris.
User: What is the capital of Italy? Assistant: The capital of Italy is Rome.
User: Who wrote the play Hamlet? Assistant: Hamlet was written by William Shakespeare.
User: Why is the ocean salty? Assistant: Rivers carry salt and minerals into the sea.
I am not sure about that, but I will try my best to give a correct answer.
Thank you for the question. Here is a clear and short explanation.
Sorry, I cannot help with that request. Is there anything else I can do?
The weather today is sunny with a light wind. Tomorrow it may rain in the north.
She opened the window, looked at the garden, and smiled at the morning light.
He said that the train would arrive at 9 and leave again at 1 in the afternoon.
We measured the time it took to run the tests: 3 seconds on the laptop, 7 on the server.
The table has 4 rows and 3 columns. Each cell holds a number between 0 and 9.
Water boils at 1 0 0 degrees Celsius and freezes at 0 degrees Celsius.
There are 7 days in a week, 2 4 hours in a day and 6 0 minutes in an hour.
Learning to code takes practice. Write small programs, read errors, and fix them.
def add(a, b): return a + b  # a tiny function that adds two numbers
for i in range(5): print(i)  # prints 0 1 2 3 4
The answer should be short. The answer should be correct. The answer should be kind.
Why do birds fly south in winter? They look for food and warmer weather.
What does a doctor do? A doctor helps people who are sick get better.
Where do penguins live? Most penguins live in the southern half of the world.
When did people first walk on the moon? People first walked on the moon in the summer.
Which is bigger, 6 or 8? The number 8 is bigger than 6. The final answer is 8.
Which is smaller, 5 or 2? The number 2 is smaller than 5. The final answer is 2.
Solve for x: x plus 4 equals 6. Subtract 4 from both sides, so x is 2.
Solve for y: 3 times y equals 9. Divide both sides by 3, so y is 3.
Reasoning: the first number is 1, the second number is 6, their sum is 7.
Reasoning: the first number is 9, the second number is 1, their difference is 8.
Good answers explain the reasoning, then give the result on its own line.
The final answer is 0. The final answer is 1. The final answer is 2.
The final answer is 5. The final answer is 6. The final answer is 7.
Please answer with a single number. Please answer in one sentence.
Knowledge, language, and logic work together when a model writes a good response.
The library has many books: novels, history, science, poetry and cooking.
My favourite fruits are apples, bananas, oranges, grapes and cherries.
Time flies like an arrow; fruit flies like a banana.
The quick brown fox jumps over the lazy dog near the quiet river bank.
"""


def default_toy_dir() -> Path:
    """Cache folder shared by tests and demos, so the kit is built once per machine."""
    return switchgen_home() / "toy-models"


def ensure_toy_models() -> dict[str, Path]:
    """Build the kit in the default cache folder unless it is already there."""
    return build_toy_models(default_toy_dir())


def build_toy_models(directory: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Build (or reuse, if already complete) the toy kit in `directory`.

    Returns ``{"P": path, "F": path, "A": path, "switcher": path}``. The kit is built in a
    temporary sibling folder and renamed into place, so readers never see half a kit and
    two processes may build at once (the loser of the rename uses the winner's kit).
    """
    directory = Path(directory).expanduser().absolute()
    paths = {name: directory / name for name in (*TOY_CANDIDATES, SWITCHER)}
    build_atomically(directory, TOY_VERSION, _write_kit, overwrite=overwrite)
    return paths


def _write_kit(root: Path) -> None:
    """Write all four checkpoints (model, tokenizer, generation config), then the marker."""
    tokenizer = _build_tokenizer()
    for name, seed in _SEEDS.items():
        model = _build_model(tokenizer, seed=seed, eos_ends=(name == "A"))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


def _build_tokenizer() -> PreTrainedTokenizerFast:
    return kit_tokenizer(_CORPUS.splitlines(), _VOCAB_SIZE, check=_check_digits)


def kit_tokenizer(
    lines: Iterable[str], vocab_size: int, *, check: Callable[[Tokenizer], None] | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `lines` in the kits' format: BOS added like Llama, the chat template, left padding.

    `check(backend)` may refuse the trained vocabulary (e.g. a token that must stay single).
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B:1",
        special_tokens=[(BOS, backend.token_to_id(BOS))],
    )
    if check is not None:
        check(backend)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(SPECIAL_TOKENS[3:]),
        padding_side="left",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
    )


def _check_digits(backend: Tokenizer) -> None:
    """Fail loudly if a tokenizers release changes the digit-per-token guarantee."""
    vocab = backend.get_vocab()
    for digit in "0123456789":
        for text in (digit, " " + digit):
            ids = backend.encode(text, add_special_tokens=False).ids
            if len(ids) != 1:
                raise RuntimeError(f"toy tokenizer splits {text!r} into {len(ids)} tokens")
    multi = [token for token in vocab if sum(char.isdigit() for char in token) > 1]
    if multi:
        raise RuntimeError(f"toy tokenizer has multi-digit tokens: {multi[:5]}")


def _build_model(
    tokenizer: PreTrainedTokenizerFast, *, seed: int, eos_ends: bool
) -> LlamaForCausalLM:
    """A random tiny Llama whose special tokens are steered (see the module docstring)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    _steer_special_tokens(model, tokenizer, eos_ends=eos_ends)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


@torch.no_grad()
def _steer_special_tokens(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, *, eos_ends: bool
) -> None:
    """Silence special tokens as outputs; in a model meant to end, let EOS win now and then.

    Llama has no output bias, so three residual dimensions get fixed jobs (no layer writes
    to them; they are 3 of 64, the rest of the model stays random):

    * ``_DIM_BIAS`` holds the same constant in every ordinary token's embedding, and the
      final norm scales it to about ``_BIAS_FEATURE``. Ordinary tokens all gain the same
      logit from it, which softmax ignores; a special token whose entry differs by
      ``delta`` gains ``delta * _BIAS_FEATURE`` more: a static per-token output bias.
    * ``_DIM_SPECIAL`` is nonzero only in special tokens' embeddings, so that
    * a "window" head in layer 0 (see `_install_window_head`) can write into
      ``_DIM_GATE`` whether a special token lies among the last ``_EOS_WINDOW`` positions;
      only EOS reads that dimension, and is blocked by ``_GATE_LOGITS`` while it is set.

    After ``<|assistant|>`` an ending model therefore cannot stop for ``_EOS_WINDOW``-odd
    tokens, and afterwards stops with a small chance per token, set by ``_EOS_DELTA``.
    """
    constant = model.config.initializer_range
    embedding = model.get_input_embeddings().weight
    for layer in model.model.layers:
        for dim in (_DIM_BIAS, _DIM_SPECIAL, _DIM_GATE):
            layer.self_attn.o_proj.weight[dim] = 0.0
            layer.mlp.down_proj.weight[dim] = 0.0
    embedding[:, _DIM_BIAS] = constant
    embedding[:, _DIM_SPECIAL] = 0.0
    embedding[:, _DIM_GATE] = 0.0
    special_ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    for token_id in special_ids:
        ends = eos_ends and token_id == tokenizer.eos_token_id
        embedding[token_id, _DIM_BIAS] = constant + (_EOS_DELTA if ends else _SPECIAL_DELTA)
        embedding[token_id, _DIM_SPECIAL] = 1.0
        embedding[token_id, _DIM_GATE] = 1.0 if ends else 0.0

    special_feature = _normalized_feature(embedding, special_ids, _DIM_SPECIAL)
    ordinary_ids = sorted(set(range(embedding.shape[0])) - set(special_ids))
    bias_feature = _normalized_feature(embedding, ordinary_ids, _DIM_BIAS)
    _install_window_head(model, query_feature=bias_feature, key_feature=special_feature)

    final_rms = _mean_final_rms(model, tokenizer)
    model.model.norm.weight[_DIM_BIAS] = _BIAS_FEATURE * final_rms / constant
    model.model.norm.weight[_DIM_GATE] = _GATE_LOGITS * final_rms / special_feature


def _install_window_head(
    model: LlamaForCausalLM, *, query_feature: float, key_feature: float
) -> None:
    """Turn one layer-0 head into a detector of special tokens among the last few positions.

    Its query reads the constant bias feature and its key the special-token feature, both
    in one RoPE frequency pair, so the score of a special token at distance ``d`` is
    ``_WINDOW_SHARPNESS * sin(theta * (_EOS_WINDOW - d))``: large and positive inside the
    window, negative beyond it (the frequency is slow enough not to come back within
    ~1000 tokens), while ordinary tokens score 0. Its value is the special-token feature,
    written negated into ``_DIM_GATE``. The head shares its key/value head with a random
    one, which merely sees a few changed coordinates.
    """
    attention = model.model.layers[0].self_attn
    config = model.config
    head_dim = attention.head_dim
    kv_head = _WINDOW_HEAD // (config.num_attention_heads // config.num_key_value_heads)
    theta = float(model.model.rotary_emb.inv_freq[_WINDOW_PAIR])
    phase = math.pi / 2 - theta * _EOS_WINDOW  # cos(theta * d + phase) = sin(theta * (window - d))
    gain = _WINDOW_SHARPNESS / (attention.scaling * query_feature * key_feature)

    q_rows = slice(_WINDOW_HEAD * head_dim, (_WINDOW_HEAD + 1) * head_dim)
    first, second = _WINDOW_PAIR, _WINDOW_PAIR + head_dim // 2  # the two halves of a RoPE pair
    query = torch.zeros(head_dim, config.hidden_size)
    query[first, _DIM_BIAS] = gain * math.cos(phase)
    query[second, _DIM_BIAS] = gain * math.sin(phase)
    attention.q_proj.weight[q_rows] = query

    kv_base = kv_head * head_dim
    attention.k_proj.weight[kv_base + first] = 0.0
    attention.k_proj.weight[kv_base + second] = 0.0
    attention.k_proj.weight[kv_base + first, _DIM_SPECIAL] = 1.0
    attention.v_proj.weight[kv_base] = 0.0
    attention.v_proj.weight[kv_base, _DIM_SPECIAL] = 1.0

    out_column = _WINDOW_HEAD * head_dim
    attention.o_proj.weight[:, out_column] = 0.0
    attention.o_proj.weight[_DIM_GATE, out_column] = -1.0


def _normalized_feature(embedding: torch.Tensor, rows: list[int], dim: int) -> float:
    """Mean value of `dim` in the given embedding rows after RMS normalization (layer 0's view)."""
    selected = embedding[rows]
    return (selected[:, dim] / selected.pow(2).mean(dim=-1).sqrt()).mean().item()


def _mean_final_rms(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> float:
    """Mean root-mean-square of the residual stream entering the final norm, over the corpus."""
    captured: list[torch.Tensor] = []
    handle = model.model.norm.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        lines = [line for line in _CORPUS.splitlines() if line][:24]
        batch = tokenizer(lines, padding=True, return_tensors="pt")
        model.model(**batch)
    finally:
        handle.remove()
    mask = batch["attention_mask"].bool()
    return captured[0][mask].pow(2).mean(dim=-1).sqrt().mean().item()
