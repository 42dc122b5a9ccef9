"""Between LangChain messages and the graph: the question, the earlier turns, and the answer message.

The last human message is the query; the turns before it are the conversation history that
each candidate sees through its own chat template (or as a plain transcript). The answer is
one AIMessage whose response_metadata holds the turn's segments and decisions, so a caller
that only sees messages (an agent, a chat UI, LangGraph Studio) still gets the whole trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from switchgen.core.trace import Decision, Segment

# LangChain message types -> chat-template roles. A tool's result stays in the history (as a `tool`
# turn; core/prompts.py renders it as a user turn for templates without that role); an AI message's
# tool calls are not text a candidate continues, only its text is kept.
ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
MODEL_NAME = "switchgen"


def is_human(message: BaseMessage) -> bool:
    return message.type == "human"


def last_human_index(messages: Sequence[BaseMessage]) -> int | None:
    """Position of the last human message (the question), or None."""
    for i in range(len(messages) - 1, -1, -1):
        if is_human(messages[i]):
            return i
    return None


def conversation_history(messages: Sequence[BaseMessage] | None) -> list[dict[str, str]]:
    """The turns before the question as chat-template messages ({"role", "content"}).

    Messages after the last human message (an agent's tool traffic) and messages without text
    are left out.
    """
    if not messages:
        return []
    end = last_human_index(messages)
    history: list[dict[str, str]] = []
    for message in messages[: end if end is not None else 0]:
        role = ROLES.get(message.type)
        text = message.text
        if role and text:
            history.append({"role": role, "content": text})
    return history


def answer_message(
    *,
    query: str,
    segments: Sequence[Segment],
    decisions: Sequence[Decision],
    tokens_used: int,
    max_new_tokens: int,
    input_tokens: int,
    message_id: str | None = None,
) -> AIMessage:
    """The turn's answer: the segments joined as decoded, the trace in response_metadata.

    `usage_by_candidate` counts each author's patches and tokens (the switcher writes none).
    """
    finish = segments[-1].get("finish_reason") if segments else None
    metadata: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "finish_reason": finish,
        "query": query,
        "segments": [dict(s) for s in segments],
        "decisions": [dict(d) for d in decisions],
        "tokens_used": tokens_used,
        "max_new_tokens": max_new_tokens,
        "usage_by_candidate": usage_by_candidate(segments),
    }
    return AIMessage(
        id=message_id,
        content="".join(s["text"] for s in segments),
        response_metadata=metadata,
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": tokens_used,
            "total_tokens": input_tokens + tokens_used,
        },
    )


def usage_by_candidate(segments: Sequence[Segment]) -> dict[str, dict[str, int]]:
    """Patches and output tokens per author, in order of first appearance."""
    usage: dict[str, dict[str, int]] = {}
    for s in segments:
        entry = usage.setdefault(s["candidate"], {"patches": 0, "output_tokens": 0})
        entry["patches"] += 1
        entry["output_tokens"] += int(s.get("tokens") or 0)
    return usage
