"""Each patch and each switcher call as a run in LangChain's callbacks (LangSmith; LangGraph's `messages` mode).

A candidate's patch is a chat-model run (a child of its node's run) named after the candidate,
with the model name (`ls_model_name`), the prompt, the text, the tokens (usage_metadata) and the
finish reason. Its text goes out token by token as AIMessageChunks (`on_llm_new_token`), which
is how LangGraph's `stream_mode="messages"` picks up chat-model tokens: each chunk is named after
its author, and all chunks of a turn carry the answer message's id, so the chunks of every patch
join to the turn's answer (the last one brings its metadata and usage) and LangGraph does not send
the answer a second time. The learned switcher's call is an LLM run with its prompt and the
decision (probabilities, digit mass, the chosen candidate); LLM runs are not streamed in
`messages` mode.

A run is only opened when someone listens (a tracer, a streaming handler): otherwise nothing is
built or counted.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackManager, CallbackManager, CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, LLMResult

PROVIDER = "switchgen"


def _manager(metadata: dict[str, Any]) -> CallbackManager | None:
    """The callback manager of the node being run, or None (outside a run, or nobody listens)."""
    from langgraph.config import get_config

    try:
        config = get_config()
    except RuntimeError:  # a node function called on its own
        return None
    callbacks = config.get("callbacks")
    if callbacks is None or (isinstance(callbacks, BaseCallbackManager) and not callbacks.handlers):
        # Nobody listens: a tracer enabled by the environment would have joined the graph's own run.
        return None
    manager = CallbackManager.configure(
        inheritable_callbacks=config.get("callbacks"),
        inheritable_tags=config.get("tags"),
        inheritable_metadata=config.get("metadata"),
        local_metadata=metadata,
    )
    return manager if manager.handlers else None


def answer_id(turn: str | None) -> str | None:
    """The id of a turn's answer message: its patches' chunks carry it (None: no turn id known)."""
    return f"switchgen-{turn}" if turn else None


class PatchRun:
    """One candidate's patch as a chat-model run: start, tokens, the closing chunk, end."""

    def __init__(self, run: CallbackManagerForLLMRun | None, candidate: str, message_id: str | None) -> None:
        self.run = run
        self.candidate = candidate
        self.message_id = message_id
        self.streamed = False

    @classmethod
    def start(cls, *, candidate: str, model: str, patch: int, prompt: str, message_id: str | None,
              invocation: dict[str, Any]) -> PatchRun:
        metadata = {"ls_provider": PROVIDER, "ls_model_name": model, "ls_model_type": "chat",
                    "switchgen_candidate": candidate, "switchgen_patch": patch}
        if "temperature" in invocation:
            metadata["ls_temperature"] = invocation["temperature"]
        manager = _manager(metadata)
        if manager is None:
            return cls(None, candidate, message_id)
        serialized = {"lc": 1, "type": "not_implemented", "id": ["switchgen", "candidate"], "name": candidate}
        runs = manager.on_chat_model_start(
            serialized, [[HumanMessage(content=prompt)]], name=candidate,
            invocation_params={"model": model, "candidate": candidate, "patch": patch, **invocation},
        )
        return cls(runs[0], candidate, message_id)

    def _chunk(self, text: str, **fields: Any) -> None:
        if self.run is None:
            return
        chunk = AIMessageChunk(content=text, id=self.message_id, name=self.candidate, **fields)
        self.run.on_llm_new_token(text, chunk=ChatGenerationChunk(message=chunk))
        self.streamed = True

    def token(self, text: str) -> None:
        if text:
            self._chunk(text)

    def close_answer(self, answer: AIMessage) -> None:
        """The turn's last chunk: no text, the answer's metadata and usage (joined chunks == the answer)."""
        self._chunk("", response_metadata=dict(answer.response_metadata), usage_metadata=answer.usage_metadata,
                    chunk_position="last")

    def end(self, *, text: str, input_tokens: int, output_tokens: int, finish_reason: str, prefilled: int) -> None:
        if self.run is None:
            return
        if not self.streamed:  # LangGraph marks the answer's id as sent only once a chunk carried it
            self._chunk("")
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                 "total_tokens": input_tokens + output_tokens}
        message = AIMessage(content=text, id=self.message_id, name=self.candidate, usage_metadata=usage,
                            response_metadata={"finish_reason": finish_reason, "model_provider": PROVIDER})
        info = {"finish_reason": finish_reason, "prefilled": prefilled}
        self.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message, generation_info=info)]],
                                      llm_output={"token_usage": usage}))

    def error(self, err: BaseException) -> None:
        if self.run is not None:
            self.run.on_llm_error(err)


class SwitcherRun:
    """The learned switcher's decision as an LLM run (its passes in the decision's `passes`; the prompt and
    input tokens are those of the pass over the trace as it is), ended with the decision."""

    def __init__(self, run: CallbackManagerForLLMRun | None) -> None:
        self.run = run

    @classmethod
    def start(cls, *, model: str, prompt: str, step: int) -> SwitcherRun:
        manager = _manager({"ls_provider": PROVIDER, "ls_model_name": model, "ls_model_type": "llm",
                            "switchgen_step": step})
        if manager is None:
            return cls(None)
        serialized = {"lc": 1, "type": "not_implemented", "id": ["switchgen", "switcher"], "name": "switcher"}
        runs = manager.on_llm_start(serialized, [prompt], name="switcher",
                                    invocation_params={"model": model, "step": step})
        return cls(runs[0])

    def end(self, decision: dict[str, Any], input_tokens: int) -> None:
        if self.run is None:
            return
        usage = {"prompt_tokens": input_tokens, "completion_tokens": 0, "total_tokens": input_tokens}
        generation = Generation(text=str(decision.get("chosen")), generation_info={"decision": decision})
        self.run.on_llm_end(LLMResult(generations=[[generation]], llm_output={"token_usage": usage}))

    def error(self, err: BaseException) -> None:
        if self.run is not None:
            self.run.on_llm_error(err)
