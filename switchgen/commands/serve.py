"""`switchgen serve`: each checkpoint over TGI's protocol (servers/serve/); `switchgen merge-switcher`."""

from __future__ import annotations

import argparse
from pathlib import Path

from switchgen.commands.options import (
    DEFAULT_HOST,
    add_config_args,
    add_listen_args,
    load_command_config,
    non_negative_int,
    positive_int,
    quiet_transformers,
    source_args,
    write_text,
)
from switchgen.core.errors import SwitchgenError
from switchgen.core.files import check_writable

MAX_TOP_N_TOKENS = 1024  # largest top_n_tokens / logprobs a server allows by default
DEFAULT_ENGINE = "tgi"  # the protocol --print-config and --compose write for


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve each checkpoint over TGI's HTTP protocol (and /v1/completions), or write a compose file",
        description="Start one server per distinct checkpoint of the configuration on 127.0.0.1 "
        "(ports BASE, BASE+1, ...), or print the config that points at them, or a Docker Compose file.",
    )
    add_config_args(serve)
    add_listen_args(serve, default_port=8080, port_help="first port; one per server (default 8080; 0: any free)")
    serve.add_argument("--max-top-n-tokens", type=non_negative_int, default=MAX_TOP_N_TOKENS,
                       help="largest top_n_tokens / logprobs allowed")
    serve.add_argument("--max-input-tokens", type=positive_int, help="TGI's: longest input in tokens (default: total - 1)")
    serve.add_argument("--max-total-tokens", type=positive_int,
                       help="TGI's: input + new tokens (default: the model's context)")
    serve.add_argument("--payload-limit", type=positive_int, help="TGI's: largest request body in bytes (default 2000000)")
    serve.add_argument("--access-log", action="store_true", help="an access line per request on stderr")
    serve.add_argument("--print-config", action="store_true", help="print a config pointing at the servers, and exit")
    serve.add_argument("--compose", action="store_true", help="print a Docker Compose file for GPUs instead of serving")
    serve.add_argument(
        "--engine", choices=["tgi", "vllm"], default=DEFAULT_ENGINE,
        help="protocol of --print-config (tgi, or vllm: the OpenAI completions API) and server image of --compose",
    )
    serve.add_argument("--output", type=Path, help="write --compose or --print-config here instead of stdout")
    serve.set_defaults(func=run)

    merge = sub.add_parser("merge-switcher", help="merge the switcher's LoRA adapter into its base model (for TGI)")
    add_config_args(merge)
    merge.add_argument("--output", type=Path, required=True, help="folder for the merged model and tokenizer")
    merge.set_defaults(func=merge_switcher)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.servers.serve.plan import plan_servers

    if args.output is not None:
        check_writable(args.output, "--output")
    config = load_command_config(args)
    if args.compose:
        from switchgen.servers.serve.compose import compose_config, compose_file

        text = compose_config(config, engine=args.engine, base_port=args.port) if args.print_config else compose_file(
            config, engine=args.engine, base_port=args.port, source=source_args(args)
        )
        return write_text(text, args.output)
    plan = plan_servers(config, args.port)
    if args.print_config:
        if args.port == 0:
            raise SwitchgenError("--print-config needs fixed ports: give --port BASE")
        return write_text(_config_yaml(config, plan, args), args.output)
    return _serve(plan, args)


def _serve(plan, args: argparse.Namespace) -> int:
    from switchgen.servers.serve.run import prepare, serve_forever

    running = prepare(
        plan,
        args.host,
        max_top_n_tokens=args.max_top_n_tokens,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        payload_limit=args.payload_limit,
        api_key=args.api_key or None,
        allowed_hosts=args.allowed_hosts,
        access_log=args.access_log,
    )

    def ready() -> None:
        auth = "; API key required" if args.api_key else ""
        print(f"switchgen serve: {len(running)} servers (TGI protocol, /v1/completions, /v1/chat/completions{auth}); "
              "Ctrl-C stops them")
        for r in running:
            users = ", ".join(r.plan.users) + (f" (+ adapter {', '.join(r.plan.adapters)})" if r.plan.adapters else "")
            print(f"  {r.plan.url(args.host):<26} {r.plan.model:<24} {users}")
        hint = " ".join(["switchgen serve", *source_args(args), f"--port {running[0].plan.port}", "--print-config"])
        print(f"a config for these servers: {hint} > my.yaml")
        print("ready", flush=True)

    serve_forever(running, on_ready=ready)
    return 0


def _config_yaml(config, plan, args: argparse.Namespace) -> str:
    import yaml

    from switchgen.servers.serve.plan import served_config

    data = served_config(config, plan, engine=args.engine, host=args.host)
    if "switcher" in data and "top_n_tokens" not in data["switcher"]:
        data["switcher"]["top_n_tokens"] = args.max_top_n_tokens  # these servers allow it: the exact distribution
    return _generated_by(args) + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _generated_by(args: argparse.Namespace) -> str:
    """The command that writes this config again: every flag that shaped it."""
    flags = [*source_args(args), f"--port {args.port}", "--print-config"]
    if args.host != DEFAULT_HOST:
        flags.insert(-1, f"--host {args.host}")
    if args.max_top_n_tokens != MAX_TOP_N_TOKENS:
        flags.insert(-1, f"--max-top-n-tokens {args.max_top_n_tokens}")
    if args.engine != DEFAULT_ENGINE:
        flags.append(f"--engine {args.engine}")
    return f"# Generated by: switchgen serve {' '.join(flags)}\n"


def merge_switcher(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.servers.serve.merge import merge_switcher

    print(f"merged switcher in {merge_switcher(load_command_config(args), args.output)}")
    return 0
