"""What one request to `switchgen serve` may ask for, checked as TGI's router checks it.

The limits are TGI's launcher flags with TGI's defaults: `--max-input-tokens` (default: the
total less one), `--max-total-tokens` (default: the model's context, `max_position_embeddings`)
and `--payload-limit` (bytes of a request body, default 2,000,000). A body over the payload
limit is refused (413) before it is read in full; token limits are checked after tokenisation,
which runs off the event loop (servers/serve/app.py). Messages follow TGI's router, prefixed
"Input validation error: " as TGI does, so clients that match on them (and people) recognise them.

Every route of every server (TGI's, OpenAI's completions, chat completions) uses these: one
place for the limits (the error shapes and the bounded body read are servers/serve/http.py's).
"""

from __future__ import annotations

from dataclasses import dataclass

from switchgen.servers.serve.http import HttpError

DEFAULT_PAYLOAD_LIMIT = 2_000_000  # TGI's --payload-limit default, bytes
MAX_STOP_SEQUENCES = 4  # TGI's --max-stop-sequences default


class RequestError(HttpError):
    """A request refused before any model work: TGI's 422 validation error."""

    def __init__(self, message: str) -> None:
        super().__init__(422, message, "validation")


@dataclass(frozen=True)
class Limits:
    """One server's request limits (TGI's launcher flags)."""

    max_input_tokens: int
    max_total_tokens: int
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    max_stop_sequences: int = MAX_STOP_SEQUENCES

    @classmethod
    def for_context(
        cls,
        context: int,
        *,
        max_input_tokens: int | None = None,
        max_total_tokens: int | None = None,
        payload_limit: int | None = None,
    ) -> Limits:
        """TGI's defaults for a model of `context` positions, with any flag given applied (ValueError if inconsistent)."""
        total = max_total_tokens or context
        if total > context:
            raise ValueError(f"--max-total-tokens {total} exceeds the model's context of {context} tokens")
        inputs = max_input_tokens or total - 1
        if inputs >= total:
            raise ValueError(f"--max-input-tokens ({inputs}) must be less than --max-total-tokens ({total})")
        payload = payload_limit or DEFAULT_PAYLOAD_LIMIT
        if min(total, inputs, payload) < 1:
            raise ValueError("--max-input-tokens, --max-total-tokens and --payload-limit must be positive")
        return cls(max_input_tokens=inputs, max_total_tokens=total, payload_limit=payload)

    def check_tokens(self, input_tokens: int, max_new_tokens: int, *, new_name: str = "max_new_tokens") -> None:
        """TGI's two token checks: the input alone, then the input plus what may be generated."""
        if input_tokens > self.max_input_tokens:
            raise RequestError(
                f"Input validation error: `inputs` must have less than {self.max_input_tokens} tokens. "
                f"Given: {input_tokens}"
            )
        if input_tokens + max_new_tokens > self.max_total_tokens:
            raise RequestError(
                f"Input validation error: `inputs` tokens + `{new_name}` must be <= {self.max_total_tokens}. "
                f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `{new_name}`"
            )
