"""The knobs of an HTTP service on the shared base (servers/serve/http.py), with `switchgen api`'s defaults.

Kept apart from the apps (standard library only) so the CLI can show the defaults without
importing Starlette, LangGraph or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PAYLOAD_LIMIT = 4 * 1024 * 1024


@dataclass
class ServiceSettings:
    """How a service admits requests, who may call it, and what it logs."""

    max_concurrent_requests: int = 32  # work at once (`switchgen api`: graph runs; a request with n choices takes n)
    max_queued_requests: int = 64  # requests waiting for a slot; more: 429
    queue_timeout: float = 30.0  # seconds a request may wait for a slot; longer: 503
    request_timeout: float = 600.0  # seconds an admitted request's work may take; longer: 504
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT  # bytes of a request body; more: 413, never buffered whole
    api_key: str | None = None
    host: str = "127.0.0.1"  # where it listens: a loopback server without a key checks Host/Origin
    allowed_hosts: list[str] | None = None  # names accepted in Host/Origin (http.allowed_hosts)
    access_log: bool = True
