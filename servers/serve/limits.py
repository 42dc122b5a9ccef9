"""What one request to `switchgen serve` may ask for, checked as TGI's router checks it, and TGI's error shapes.

The limits are TGI's launcher flags with TGI's defaults: `--max-input-tokens` (default: the
total less one), `--max-total-tokens` (default: the model's context, `max_position_embeddings`)
and `--payload-limit` (bytes of a request body, default 2,000,000). A body over the payload
limit is refused (413) before it is read in full; token limits are checked after tokenisation,
which runs off the event loop (servers/serve/app.py). Messages follow TGI's router, prefixed
"Input validation error: " as TGI does, so clients that match on them (and people) recognise them.

Every route of every server (TGI's, OpenAI's completions, chat completions) uses these: one
place for the limits and one `error_response` for the shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

DEFAULT_PAYLOAD_LIMIT = 2_000_000  # TGI's --payload-limit default, bytes
MAX_STOP_SEQUENCES = 4  # TGI's --max-stop-sequences default


class RequestError(Exception):
    """A request refused before any model work: TGI's 422 validation error (413 for a body too large)."""

    def __init__(self, message: str, status: int = 422, kind: str = "validation") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes: a huge body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        f"Payload too large: the body exceeds {limit} bytes (the server's --payload-limit)",
        status=413,
        kind="payload_limit",
    )


def error_response(status: int, message: str, kind: str, *, stream: bool = False) -> Response:
    """TGI's error shape {"error", "error_type"}; as one server-sent event on the streaming routes."""
    body: dict[str, Any] = {"error": message, "error_type": kind}
    if stream:
        payload = f"data:{json.dumps(body, ensure_ascii=False)}\n\n".encode()
        return Response(payload, status_code=status, media_type="text/event-stream")
    return JSONResponse(body, status_code=status)
