"""OpenAI chat requests as both servers read them: text messages, and the sampling fields they refuse.

`switchgen serve` (one checkpoint's chat template) and `switchgen api` (the switch graph) take
the same messages. The checkpoints read text: a message part that is not text (an image, audio,
a file) is refused with a 400 naming it, never dropped. Sampling fields neither server applies
are refused by name, unless they hold their neutral value (clients send some by default).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

# Sampling fields that neither server applies, with the values besides null that mean "off" (some clients send them).
REFUSED_SAMPLING: dict[str, tuple[Any, ...]] = {
    "logit_bias": ({},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "top_k": (-1, 0),
    "min_p": (0, 0.0),
    "typical_p": (1, 1.0),
    "best_of": (1,),
    "min_tokens": (0,),
    "use_beam_search": (False,),
    "length_penalty": (1, 1.0),
    "ignore_eos": (False,),
    "stop_token_ids": ([],),
    "prompt_logprobs": (0,),
    "guided_json": (),
    "guided_regex": (),
    "guided_choice": (),
    "guided_grammar": (),
    "structured_outputs": (),
    "prediction": (),
}
WHY = {
    "logit_bias": "an answer mixes several checkpoints, each with its own vocabulary",
    "logprobs": "an answer mixes several checkpoints' tokens",
    "top_logprobs": "an answer mixes several checkpoints' tokens",
}


class TextOnly(BaseModel):
    """A request whose sampling fields outside what the server applies are refused, naming the field."""

    model_config = ConfigDict(extra="ignore")

    logit_bias: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    repetition_penalty: Any = None
    top_k: Any = None
    min_p: Any = None
    typical_p: Any = None
    best_of: Any = None
    min_tokens: Any = None
    use_beam_search: Any = None
    length_penalty: Any = None
    ignore_eos: Any = None
    stop_token_ids: Any = None
    prompt_logprobs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    structured_outputs: Any = None
    prediction: Any = None

    @field_validator(*REFUSED_SAMPLING)
    @classmethod
    def _refused(cls, value: Any, info: Any) -> Any:
        neutral = REFUSED_SAMPLING[info.field_name]  # None (unset) is neutral for every field
        if value is not None and not any(type(value) is type(n) and value == n for n in neutral):
            why = WHY.get(info.field_name, "the server does not apply it")
            raise ValueError(f"{info.field_name} is not supported: {why}")
        return value


class ChatMessage(BaseModel):
    """One OpenAI chat message; its content is text, or a list of text parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        for i, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type")
            if kind != "text":
                raise ValueError(f"part {i} is {kind!r}: only text parts are supported (the checkpoints read text)")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"part {i}: a text part needs a string `text`")
        return content

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""

    def as_dict(self) -> dict[str, Any]:
        """The message as a plain dict with string content (what chat templates and LangChain take)."""
        data = self.model_dump(exclude_none=True)
        data["content"] = self.text
        if data["role"] == "developer":
            data["role"] = "system"
        return data
