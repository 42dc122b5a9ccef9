"""How each checkpoint sees the query and the trace, rendered as text with its own tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_SENTINEL = "\uE000switchgen-trace\uE000"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prefix(tokenizer: PreTrainedTokenizerBase, query: str) -> str:
    """The chat-templated prompt up to where the assistant's reply begins.

    Rendered with a placeholder reply that is then cut off, so the trace is appended verbatim
    (templates that trim or escape content never touch it) and every patch's prompt extends the
    previous one: the KV cache's common prefix stays whole.
    """
    messages = [{"role": "user", "content": query}, {"role": "assistant", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    if _SENTINEL in rendered:
        return rendered[: rendered.index(_SENTINEL)]
    # A template that drops the reply's content: the generation prompt is the prefix.
    return tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)


def candidate_prompt(
    tokenizer: PreTrainedTokenizerBase,
    view: str,
    query: str,
    segments: Sequence[str],
    plain_template: str = "{query}\n\n{trace}",
) -> str:
    """The prompt a candidate continues.

    chat: its chat template, user turn = query, the trace = its own partial reply.
    plain: `plain_template` filled with the query and the trace.
    reference: as the paper's code: user turn = query + " " + each segment followed by a space,
    with the generation prompt (raw text where the tokenizer has no template).
    """
    trace = "".join(segments)
    if view == "chat":
        return chat_prefix(tokenizer, query) + trace
    if view == "plain":
        return plain_template.format(query=query, trace=trace)
    if view == "reference":
        text = query + " " + "".join(s + " " for s in segments)
        return user_turn(tokenizer, text)
    raise ValueError(f"unknown view {view!r}")


def user_turn(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """`text` as a user message with the generation prompt, or as is without a chat template."""
    if not has_chat_template(tokenizer):
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
