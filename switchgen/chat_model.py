"""Switch Generation as a LangChain chat model: `ChatSwitchGeneration(graph=build_graph(...))`.

Messages in, one AIMessage out, through the graph: the last human message is the query, the
earlier turns are the history each candidate sees. The answer's response_metadata holds the
segments and decisions, usage_metadata the token counts. invoke/ainvoke/batch/stream/astream
come from BaseChatModel; streaming yields the text as the candidates write it (so a LangGraph
graph calling this model streams tokens in `messages` mode), then a last chunk with the metadata.
Each text chunk names its author as the graph's own `messages` stream does: `name` is the
candidate, and its response_metadata holds `switchgen_candidate` and `switchgen_patch`. Those two
keys describe one chunk: LangChain joins chunks by adding their metadata (strings concatenated,
numbers summed), so the answer that invoke returns drops them (its `segments` say who wrote what).

LangSmith sees the model as provider `switchgen` (`ls_model_name`: the candidates' checkpoints),
with the graph's runs nested under it: a chat-model run per patch (its author, model and tokens)
and an LLM run per switcher call; `response_metadata["usage_by_candidate"]` counts each author's
patches and tokens.

The model is stateless, like any chat model: the conversation is the messages it is given. For
memory across calls (threads), review mode or forking, use the graph itself with a checkpointer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.constants import TAG_NOSTREAM
from pydantic import ConfigDict, Field

from switchgen.core.errors import InputError, UnsupportedError

STREAM_MODES = ["custom", "values"]
CHUNK_KEYS = ("switchgen_candidate", "switchgen_patch")  # a text chunk's author: per chunk, not for the answer


def _child_callbacks(run: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun) -> Any:
    """A callback manager whose runs are children of `run` (what chain runs' get_child gives)."""
    manager_type = AsyncCallbackManager if isinstance(run, AsyncCallbackManagerForLLMRun) else CallbackManager
    child = manager_type(handlers=[], parent_run_id=run.run_id)
    child.set_handlers(run.inheritable_handlers)
    child.add_tags(run.inheritable_tags)
    child.add_metadata(run.inheritable_metadata)
    return child


def _answer_only(message: AIMessage) -> AIMessage:
    """The answer without the per-chunk author keys that joining streamed chunks leaves behind."""
    if any(key in message.response_metadata for key in CHUNK_KEYS):
        meta = {k: v for k, v in message.response_metadata.items() if k not in CHUNK_KEYS}
        message = message.model_copy(update={"response_metadata": meta})
    return message


class ChatSwitchGeneration(BaseChatModel):
    """A LangChain chat model whose answers are written by Switch Generation (a compiled switchgen graph)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    graph: Any = Field(exclude=True, description="The compiled graph, from switchgen.graph.build_graph.")
    context: dict[str, Any] | None = Field(
        None, description="Run-time settings for every call (switchgen.nodes.context.Context fields)."
    )

    @classmethod
    def from_config(
        cls, config: Any = None, *, context: dict[str, Any] | None = None, **build_kwargs: Any
    ) -> ChatSwitchGeneration:
        """Build the graph for `config` (a SwitchConfig, preset name or YAML path) and wrap it."""
        from switchgen.graph import build_graph

        if isinstance(config, Path):
            config = str(config)
        return cls(graph=build_graph(config, **build_kwargs), context=context)

    @property
    def _llm_type(self) -> str:
        return "switchgen"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"graph": getattr(self.graph, "name", "switchgen"), "context": self.context}

    # -- tools ------------------------------------------------------------------------------

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        """Refused: the checkpoints write free text, token by token from several models; nothing in the
        method makes them emit a tool call, and parsing one out of a mixed answer would be a guess."""
        raise UnsupportedError(
            "ChatSwitchGeneration does not call tools (the checkpoints write free text): give the agent a "
            "tool-calling chat model and the switch graph as one of its tools (examples/agent_tool.py), "
            "or use the graph as a node of your agent graph"
        )

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        """Refused, for the reason bind_tools is."""
        raise UnsupportedError(
            "ChatSwitchGeneration has no structured output (the checkpoints write free text): parse its answer "
            "yourself, or ask a structured-output chat model to extract the fields from it"
        )

    # -- one call -------------------------------------------------------------------------

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangSmith's model fields: provider switchgen, the model name lists the candidates' checkpoints."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "switchgen"
        params["ls_model_name"] = self.model_name
        return params

    @property
    def model_name(self) -> str:
        """`switchgen:` and the candidates' models, e.g. `switchgen:toy:P+toy:F+toy:A`."""
        config = getattr(self.graph, "switch_config", None)
        return "switchgen:" + "+".join(c.model for c in config.candidates) if config is not None else "switchgen"

    def _run_args(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
    ) -> dict:
        if stop:
            raise InputError("stop sequences are set per candidate in the configuration (candidates[].stop)")
        context = {**(self.context or {}), **(kwargs.get("context") or {})}
        if context.get("review"):
            raise InputError("review mode pauses the graph for a reviewer: use the graph itself, not the chat model")
        # The graph's runs (a run per patch and per switcher call) are not streamed in `messages` mode,
        # where this model's own tokens already go (named after their authors).
        config: dict[str, Any] = {"tags": [TAG_NOSTREAM]}
        if run_manager is not None:  # they nest under this model's run
            config["callbacks"] = _child_callbacks(run_manager)
        if getattr(self.graph, "checkpointer", None) not in (None, False):
            config["configurable"] = {"thread_id": f"chat-{uuid.uuid4().hex}"}  # each call is its own conversation
        return {"input": {"messages": list(messages)}, "config": config, "context": context or None}

    @staticmethod
    def _answer(result: dict[str, Any] | None) -> AIMessage:
        if not result or "__interrupt__" in result:
            raise InputError("the graph paused (interrupt) before answering")
        message = (result.get("messages") or [None])[-1]
        if not isinstance(message, AIMessage):
            raise InputError("the graph returned no answer message")
        return message

    @staticmethod
    def _last_chunk(message: AIMessage) -> ChatGenerationChunk:
        """The closing chunk: no text, the answer's metadata and usage."""
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                response_metadata=dict(message.response_metadata),
                usage_metadata=message.usage_metadata,
                chunk_position="last",
            )
        )

    @staticmethod
    def _token(event: Any) -> ChatGenerationChunk | None:
        """A custom stream event of the graph ({candidate, text, patch}) as a chunk named after its author."""
        if not (isinstance(event, dict) and isinstance(event.get("text"), str) and "candidate" in event):
            return None
        author = {"switchgen_candidate": event["candidate"], "switchgen_patch": event.get("patch")}
        return ChatGenerationChunk(
            message=AIMessageChunk(content=event["text"], name=event["candidate"], response_metadata=author)
        )

    def invoke(self, input: Any, config: Any = None, *, stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        return _answer_only(super().invoke(input, config, stop=stop, **kwargs))

    async def ainvoke(self, input: Any, config: Any = None, *, stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        return _answer_only(await super().ainvoke(input, config, stop=stop, **kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        args = self._run_args(messages, stop, kwargs, run_manager)
        result = self.graph.invoke(args["input"], args["config"], context=args["context"])
        return ChatResult(generations=[ChatGeneration(message=self._answer(result))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        args = self._run_args(messages, stop, kwargs, run_manager)
        result = await self.graph.ainvoke(args["input"], args["config"], context=args["context"])
        return ChatResult(generations=[ChatGeneration(message=self._answer(result))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        args = self._run_args(messages, stop, kwargs, run_manager)
        final = None
        for mode, data in self.graph.stream(
            args["input"], args["config"], context=args["context"], stream_mode=STREAM_MODES
        ):
            if mode == "values":
                final = data
            elif (chunk := self._token(data)) is not None:
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        yield self._last_chunk(self._answer(final))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        args = self._run_args(messages, stop, kwargs, run_manager)
        final = None
        async for mode, data in self.graph.astream(
            args["input"], args["config"], context=args["context"], stream_mode=STREAM_MODES
        ):
            if mode == "values":
                final = data
            elif (chunk := self._token(data)) is not None:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        yield self._last_chunk(self._answer(final))
