"""How each checkpoint sees the query and the trace, rendered as text with its own tokenizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

_SENTINEL = "\uE000switchgen-trace\uE000"
_PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}

PLAIN_TURN_STOP = "\nUser:"  # plain candidates in a conversation stop where they would write the user's turn

# Earlier turns of a conversation: chat-template messages {"role": ..., "content": ...}.
History = Sequence[Mapping[str, str]]


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prefix(tokenizer: PreTrainedTokenizerBase, query: str, history: History = ()) -> str:
    """The chat-templated prompt (earlier turns, then the query) up to where the assistant's reply begins.

    Rendered with a placeholder reply that is then cut off, so the trace is appended verbatim
    (templates that trim or escape content never touch it) and every patch's prompt extends the
    previous one: the KV cache's common prefix stays whole.
    """
    messages = [*_renderable(tokenizer, history), {"role": "user", "content": query},
                {"role": "assistant", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    if _SENTINEL in rendered:
        return rendered[: rendered.index(_SENTINEL)]
    # A template that drops the reply's content: the generation prompt is the prefix.
    return tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)


def plain_transcript(history: History, query: str) -> str:
    """A conversation as plain text for models without a chat template: "User: ...", "Assistant: ..." lines.

    Without earlier turns it is the query alone (the single-turn prompt is unchanged).
    """
    if not history:
        return query
    lines = [f"{_PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in history]
    return "\n".join([*lines, f"User: {query}"])


def candidate_prompt(
    tokenizer: PreTrainedTokenizerBase,
    view: str,
    query: str,
    segments: Sequence[str],
    plain_template: str = "{query}\n\n{trace}",
    history: History = (),
) -> str:
    """The prompt a candidate continues.

    chat: its chat template, the earlier turns, user turn = query, the trace = its own partial reply.
    plain: `plain_template` filled with the query and the trace; with earlier turns, the query is a
    plain transcript ("User: ..." / "Assistant: ..." lines) and the trace is labelled "Assistant:" too
    (a base model then answers as the assistant; PLAIN_TURN_STOP keeps it from writing the user's next turn).
    reference: as the paper's code: user turn = query + " " + each segment followed by a space,
    with the generation prompt (raw text where the tokenizer has no template).
    """
    trace = "".join(segments)
    if view == "chat":
        return chat_prefix(tokenizer, query, history) + trace
    if view == "plain":
        if history:  # the current turn is the assistant's, labelled like the earlier ones
            trace = "Assistant:" + (" " if trace and not trace[0].isspace() else "") + trace
        return plain_template.format(query=plain_transcript(history, query), trace=trace)
    if view == "reference":
        text = query + " " + "".join(s + " " for s in segments)
        return user_turn(tokenizer, text, history)
    raise ValueError(f"unknown view {view!r}")


def user_turn(tokenizer: PreTrainedTokenizerBase, text: str, history: History = ()) -> str:
    """`text` as a user message with the generation prompt, or as is without a chat template.

    The switcher always gets it without history: its prompt stays the released switchers'.
    """
    if not has_chat_template(tokenizer):
        return plain_transcript(history, text) if history else text
    messages = [*_renderable(tokenizer, history), {"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _renderable(tokenizer: PreTrainedTokenizerBase, history: History) -> list[dict[str, str]]:
    """The history as the template can take it: tool results become user turns where it has no `tool` role."""
    messages = [dict(m) for m in history]
    if any(m["role"] == "tool" for m in messages) and "tool" not in (tokenizer.chat_template or ""):
        messages = [{"role": "user", "content": f"Tool result: {m['content']}"} if m["role"] == "tool" else m
                    for m in messages]
    return messages


def switcher_prompt(query: str, segments: Sequence[str], model_indices: Sequence[int], n_candidates: int) -> str:
    """The released switchers' prompt: the query, each segment tagged with its author, the question."""
    return (
        query
        + "".join(f" <model {i} begins> {s} <model {i} ends>" for s, i in zip(segments, model_indices, strict=True))
        + f" Which model should generate the next segment? Please respond with a number from 0 to {n_candidates - 1}."
        + " The answer is model "
    )


_ROLE_DESCRIPTIONS = {
    "pretrained": "a pretrained base model: broad knowledge, loose about the answer's format",
    "finetuned": "an instruction-finetuned model: follows instructions",
    "aligned": "an aligned (preference-tuned) chat model: helpful, well-formatted answers",
    "other": "a language model",
}


def routing_prompt(query: str, roles: Sequence[str]) -> str:
    """The prompt-based routing baseline's question: which of the candidates (by role) should answer
    the whole query. Asked of the aligned model; its answer is one digit, scored like the switcher's."""
    lines = "\n".join(f"Model {i}: {_ROLE_DESCRIPTIONS.get(role, role)}." for i, role in enumerate(roles))
    return (
        f"Question: {query}\n\nThese models can answer it:\n{lines}\n"
        f"Which model should answer the question? Please respond with a number from 0 to {len(roles) - 1}."
        " The answer is model "
    )
