"""`switchgen api`: the switch graph as an OpenAI-compatible service (switchgen/api.py)."""

from __future__ import annotations

import argparse

from switchgen.commands.options import (
    add_config_args,
    add_listen_args,
    load_command_config,
    non_negative_int,
    positive_float,
    positive_int,
    quiet_transformers,
)
from switchgen.servers.serve.settings import ServiceSettings


def register(sub: argparse._SubParsersAction) -> None:
    defaults = ServiceSettings()
    api = sub.add_parser(
        "api",
        help="serve the switch graph over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models, /metrics)",
        description="An OpenAI-compatible server whose answers are written by Switch Generation; "
        "`model` in requests is --served-model-name, else the preset name or the config file's stem.",
    )
    add_config_args(api)
    add_listen_args(api, default_port=8000, port_help="port (default 8000; 0: any free)")
    api.add_argument("--served-model-name", help="the model name clients ask for (default: the preset or file stem)")
    api.add_argument("--max-concurrent-requests", type=positive_int, default=defaults.max_concurrent_requests,
                     help=f"graph runs at once; a request with n choices takes n (default {defaults.max_concurrent_requests})")
    api.add_argument("--max-queued-requests", type=non_negative_int, default=defaults.max_queued_requests,
                     help=f"requests waiting for a slot; more get 429 (default {defaults.max_queued_requests})")
    api.add_argument("--queue-timeout", type=positive_float, default=defaults.queue_timeout,
                     help=f"seconds a request may wait for a slot; longer: 503 (default {defaults.queue_timeout:g})")
    api.add_argument("--request-timeout", type=positive_float, default=defaults.request_timeout,
                     help=f"seconds an admitted request may run; longer: stopped, 504 (default {defaults.request_timeout:g})")
    api.add_argument("--payload-limit", type=positive_int, default=defaults.payload_limit,
                     help=f"largest request body in bytes (default {defaults.payload_limit})")
    api.add_argument("--no-access-log", dest="access_log", action="store_false",
                     help="no access line per request on stderr")
    api.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.api import create_api_app, model_id_for, serve_api
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers

    config = load_command_config(args)
    check_servers(server_probes(config))
    model_id = model_id_for(str(args.config) if args.config else args.preset, args.served_model_name)
    settings = ServiceSettings(
        max_concurrent_requests=args.max_concurrent_requests, max_queued_requests=args.max_queued_requests,
        queue_timeout=args.queue_timeout, request_timeout=args.request_timeout, api_key=args.api_key or None, host=args.host,
        allowed_hosts=args.allowed_hosts, payload_limit=args.payload_limit, access_log=args.access_log,
    )
    app = create_api_app(config, model_id, settings=settings)

    def ready(url: str) -> None:
        print(f"switchgen api: model {model_id!r} on {url}/v1 (OpenAI chat completions and completions); "
              "Ctrl-C stops it")
        print("ready", flush=True)

    serve_api(app, args.host, args.port, on_ready=ready)
    return 0
