"""A new turn's input, checked and normalised before the graph runs.

Checked here, before LangGraph writes anything to a thread, so that bad input leaves a thread's
earlier state untouched: an empty query, messages without a human message, an unknown author
or forced candidate, a context the configuration cannot take (an unknown candidate, a patch
size of 0 or above the budget).

Normalised so that every turn looks alike to the nodes: `query` is the question (the last human
message when only `messages` are given), `messages` end with it (a query given alone is added as
a HumanMessage), `segments` replaces the previous turn's trace (the reducer is bypassed with
LangGraph's overwrite form) and `forced` replaces any decisions the previous turn left unused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError
from switchgen.core.jsonl import invalid_text
from switchgen.nodes.context import resolve_config
from switchgen.nodes.messages import last_human_index

OVERWRITE = "__overwrite__"  # LangGraph's JSON form of Overwrite: bypasses a channel's reducer


def admit_turn(config: SwitchConfig, data: Mapping[str, Any], context: Any, *, has_switcher: bool) -> dict[str, Any]:
    """The input of a new turn, validated and normalised (InputError when it is not usable)."""
    resolved = resolve_config(config, context)
    if resolved.switcher.strategy == "learned" and not has_switcher:
        raise InputError(
            f"context: strategy 'learned' needs a switcher model, and this graph was built with strategy "
            f"{config.switcher.strategy!r} (none loaded); build it with switcher.strategy: learned"
        )
    out = dict(data)
    messages = _messages(data.get("messages"))
    query = data.get("query")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty: pass {'query': '...'} or a human message in 'messages'")
        last = messages[-1] if messages else None
        if last is None or last.type != "human" or last.text != query:
            messages.append(HumanMessage(content=query))
    else:
        if "messages" not in data:
            raise InputError("no question: pass {'query': '...'} or {'messages': [...]} ending with a human message")
        index = last_human_index(messages)
        if index is None:
            raise InputError("the messages hold no human message: the last human message is the query")
        query = messages[index].text
        if not query.strip():
            raise InputError("the last human message is empty: it is the query")
    _check_text("the query", query)
    for i, message in enumerate(messages):
        _check_text(f"messages[{i}]", message.text)
    out.update(
        query=query,
        messages=messages,
        segments={OVERWRITE: _segments(config, data.get("segments"))},
        forced=_forced(config, data.get("forced")),
    )
    return out


def _messages(value: Any) -> list[BaseMessage]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError("'messages' must be a list of messages")
    try:
        return list(convert_to_messages(value))
    except (ValueError, TypeError, NotImplementedError, KeyError) as err:
        raise InputError(f"'messages': not a list of chat messages ({err})".replace("\n", " ")) from None


def _segments(config: SwitchConfig, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError("'segments' must be a list of {'candidate': ..., 'text': ...}")
    for segment in value:
        if not isinstance(segment, dict) or not isinstance(segment.get("text"), str):
            raise InputError(f"segment {segment!r}: expected {{'candidate': NAME, 'text': '...'}}")
        try:
            config.index_of(segment.get("candidate"))
        except ValueError as err:
            raise InputError(f"segment {segment!r}: {err}") from None
        _check_text(f"segment {segment.get('candidate')!r}", segment["text"])
        tokens = segment.get("tokens")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
            raise InputError(
                f"segment {segment.get('candidate')!r}: 'tokens' must be a whole number >= 0 (the tokens it used "
                f"of the budget), got {tokens!r}; leave it out to have it counted"
            )
    return value


def _check_text(what: str, text: str) -> None:
    problem = invalid_text(text)
    if problem:
        raise InputError(f"{what} {problem}")


def _forced(config: SwitchConfig, value: Any) -> list[str | int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError("'forced' must be a list of candidate names or indices")
    for ref in value:
        try:
            config.index_of(ref)
        except ValueError as err:
            raise InputError(f"forced decision {ref!r}: {err}") from None
    return value
