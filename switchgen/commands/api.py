"""`switchgen api`: the switch graph as an OpenAI-compatible chat service (switchgen/api.py)."""

from __future__ import annotations

import argparse

from switchgen.commands.options import (
    add_config_args,
    add_listen_args,
    load_command_config,
    positive_int,
    quiet_transformers,
)


def register(sub: argparse._SubParsersAction) -> None:
    api = sub.add_parser(
        "api",
        help="serve the switch graph over OpenAI's chat completions API (/v1/chat/completions, /v1/models)",
        description="An OpenAI-compatible server whose answers are written by Switch Generation; "
        "`model` in requests is the preset name or the config file's stem.",
    )
    add_config_args(api)
    add_listen_args(api, default_port=8000, port_help="port (default 8000; 0: any free)")
    api.add_argument("--max-concurrent-requests", type=positive_int, default=32, help="requests run at once (default 32)")
    api.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.api import create_api_app, model_id_for, serve_api
    from switchgen.graph import build_graph
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers

    config = load_command_config(args)
    check_servers(server_probes(config))
    model_id = model_id_for(str(args.config) if args.config else args.preset)
    app = create_api_app(
        build_graph(config), model_id, max_concurrent_requests=args.max_concurrent_requests, api_key=args.api_key or None
    )

    def ready(url: str) -> None:
        print(f"switchgen api: model {model_id!r} on {url}/v1 (OpenAI chat completions); Ctrl-C stops it")
        print("ready", flush=True)

    serve_api(app, args.host, args.port, on_ready=ready)
    return 0
