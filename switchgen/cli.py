"""The `switchgen` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from switchgen.core.errors import SwitchgenError
from switchgen.core.files import atomic_write_text, check_writable

if TYPE_CHECKING:
    from switchgen.core.config import SwitchConfig


def _config_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a named preset (default: olmo2-1b); see `switchgen presets`")
    source.add_argument("--config", type=Path, help="a YAML configuration file")
    parser.add_argument("--seed", type=int, help="seed for switcher and generator sampling")
    parser.add_argument("--max-new-tokens", type=int, help="token budget of each response")
    parser.add_argument("--patch-size", type=int, help="tokens per patch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="switch generation over a JSONL file of queries")
    gen.add_argument("--input", type=Path, required=True, help='JSONL, one object with "input" per line')
    gen.add_argument("--output", type=Path, help="default: INPUT_switch_generation.jsonl beside the input")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument(
        "--concurrency", type=int,
        help="queries run at once (batched together); default: 16 in process (fills the engine's batches), 1 with servers",
    )
    _config_args(gen)

    serve = sub.add_parser(
        "serve",
        help="serve each checkpoint over TGI's HTTP protocol (and /v1/completions), or write a compose file",
        description="Start one server per distinct checkpoint of the configuration on 127.0.0.1 "
        "(ports BASE, BASE+1, ...), or print the config that points at them, or a Docker Compose file.",
    )
    _config_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="first port; one per server (default 8080; 0: any free)")
    serve.add_argument("--max-top-n-tokens", type=int, default=1024, help="largest top_n_tokens / logprobs allowed")
    serve.add_argument("--max-input-tokens", type=int, help="TGI's: longest input in tokens (default: total - 1)")
    serve.add_argument("--max-total-tokens", type=int, help="TGI's: input + new tokens (default: the model's context)")
    serve.add_argument("--payload-limit", type=int, help="TGI's: largest request body in bytes (default 2000000)")
    serve.add_argument(
        "--api-key", default=os.environ.get("SWITCHGEN_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but /health (default: $SWITCHGEN_API_KEY; none)",
    )
    serve.add_argument("--print-config", action="store_true", help="print a config pointing at the servers, and exit")
    serve.add_argument("--compose", action="store_true", help="print a Docker Compose file for GPUs instead of serving")
    serve.add_argument(
        "--engine", choices=["tgi", "vllm"], default="tgi",
        help="protocol of --print-config (tgi, or vllm: the OpenAI completions API) and server image of --compose",
    )
    serve.add_argument("--output", type=Path, help="write --compose or --print-config here instead of stdout")

    api = sub.add_parser(
        "api",
        help="serve the switch graph over OpenAI's chat completions API (/v1/chat/completions, /v1/models)",
        description="An OpenAI-compatible server whose answers are written by Switch Generation; "
        "`model` in requests is the preset name or the config file's stem.",
    )
    _config_args(api)
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    api.add_argument("--max-concurrent-requests", type=int, default=32, help="requests run at once (default 32)")
    api.add_argument(
        "--api-key", default=os.environ.get("SWITCHGEN_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but /health (default: $SWITCHGEN_API_KEY; none)",
    )

    merge = sub.add_parser("merge-switcher", help="merge the switcher's LoRA adapter into its base model (for TGI)")
    _config_args(merge)
    merge.add_argument("--output", type=Path, required=True, help="folder for the merged model and tokenizer")

    chat = sub.add_parser("chat", help="an interactive conversation, tokens coloured by the candidate writing them")
    _config_args(chat)
    chat.add_argument("--thread", help="resume this conversation (default: a new one; its id is printed)")
    chat.add_argument("--db", type=Path, help="SQLite file of the threads (default: $SWITCHGEN_HOME/chat.sqlite)")
    chat.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="ANSI colours (default: auto)")
    chat.add_argument("--review", action="store_true", help="pause before each patch to choose its author")

    toy = sub.add_parser("toy-models", help="build the tiny offline checkpoints (P, F, A, switcher)")
    toy.add_argument("directory", type=Path, nargs="?", help="default: the toy preset's cache folder")
    toy.add_argument("--overwrite", action="store_true")

    bench = sub.add_parser("bench", help="measure switching's cost against a single model and the reference")
    bench.add_argument("--preset", default="toy", help="a named preset (default: toy)")
    bench.add_argument("--config", type=Path, help="a YAML configuration file")
    bench.add_argument("--device", help="run every checkpoint on this device (e.g. cuda)")
    bench.add_argument("--budget", type=int, default=512, help="tokens per response for the variants")
    bench.add_argument("--reps", type=int, default=5, help="timed repetitions per variant, after a warm-up")
    bench.add_argument("--budgets", default="128,256,512,1024", help="budget sweep")
    bench.add_argument("--concurrency", default="1,4,8", help="concurrency sweep")
    bench.add_argument(
        "--load-reps", type=int, default=5,
        help="repetitions with 2 busy processes started beside the bench, for the spread under load (0: skip)",
    )
    bench.add_argument("--json", type=Path, default=Path("bench.json"), help="raw figures (default: bench.json)")
    bench.add_argument("--rollouts", action="store_true",
                       help="instead: switcher-training rollouts/s, shared KV prefix vs independent generations, "
                       "at each --concurrency")
    bench.add_argument("--instances", type=int, default=2, help="--rollouts: instances per rep (default 2)")
    bench.add_argument("--k", type=int, default=4, help="--rollouts: continuations per candidate (default 4)")

    roll = sub.add_parser(
        "rollouts", help="a switcher's training data: the paper's rollouts on a task's train split",
        description="For each train query: a trace by random switching cut at 10-90% of the budget, one patch "
        "by each candidate, K random-switching continuations per candidate scored by the task metric; the "
        "label is the best mean (ties: the aligned candidate, else the lowest index). Resumable; --seed "
        "(default 0) makes the file reproducible.",
    )
    roll.add_argument("--task", required=True, help="a built-in task or a task YAML (its train split is used)")
    roll.add_argument("--out", type=Path, required=True, help="the rollouts JSONL (resumed if it exists)")
    roll.add_argument("--instances", type=int,
                      help="the first N train records (default: all); beyond the split, it starts over with new traces")
    roll.add_argument("--k", type=int, default=4, help="continuations per candidate (default 4)")
    roll.add_argument("--concurrency", type=int, default=1, help="graph runs at once (servers batch them); default 1")
    roll.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_args(roll)

    train = sub.add_parser(
        "train", help="LoRA-train a switcher on rollouts (TRL SFT); several --data files: switch-global",
        description="Supervised fine-tuning of a LoRA switcher on `switchgen rollouts` files. The defaults are "
        "the paper's (8B models); tiny models (toy, skills kits) need a larger --lr, e.g. 2e-3. On GPUs: "
        "accelerate launch -m switchgen.cli train ... (docs/training.md).",
    )
    train.add_argument("--data", type=Path, action="append", required=True, help="a rollouts JSONL (repeatable)")
    train.add_argument("--out", type=Path, required=True, help="the adapter folder (must not exist or be empty)")
    train.add_argument("--base", help="the switcher's base model (default: the aligned model the rollouts recorded)")
    train.add_argument("--epochs", type=float, default=5, help="default 5 (the paper's)")
    train.add_argument("--batch-size", type=int, default=32, help="per device; default 32 (the paper's)")
    train.add_argument("--lr", type=float, default=1e-5, help="default 1e-5 (the paper's, 8B); tiny models: ~2e-3")
    train.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r); default 16")
    train.add_argument("--min-margin", type=float, default=0.0, help="drop records whose margin is below (default 0)")
    train.add_argument("--keep-uninformative", action="store_true",
                       help="also train on records where every candidate's utility is equal (left out by default)")
    train.add_argument("--eval-fraction", type=float, default=0.1, help="held out for the report (default 0.1)")
    train.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    train.add_argument("--merge", action="store_true", help="also write OUT/merged: base + adapter merged")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    analyze = sub.add_parser(
        "analyze", help="report (markdown + PNG plots) over `switchgen eval` outputs: who wrote where and why it helped"
    )
    analyze.add_argument("directory", type=Path, help="the --out folder of `switchgen eval`")
    analyze.add_argument("--out", type=Path, help="report folder (default: DIRECTORY/report)")
    analyze.add_argument("--method", default="switch", help="method whose author sequences are analysed (default: switch)")
    analyze.add_argument(
        "--correct-threshold", type=float,
        help="score counted as correct in the single-vs-switch table (default: 1 for 0/1 metrics, else 0.5)",
    )

    distill = sub.add_parser(
        "distill", help="fine-tune the aligned model on switch generation's train-split answers and evaluate it",
        description="LoRA SFT (TRL) of the aligned model on switch generation's answers to the task's train split "
        "(make them with `switchgen eval --split train --methods switch`), merged into OUT; then the distilled model "
        "(single:D), the aligned model and switching are evaluated on the test split, and the fraction of "
        "switching's gain recovered and the inference cost are reported.",
    )
    distill.add_argument("--outputs", type=Path, required=True, help="a `switchgen eval --split train` --out folder")
    distill.add_argument("--task", required=True, help="the task (its train split was answered; its test split evaluates)")
    distill.add_argument("--out", type=Path, required=True, help="folder for the distilled model (must not exist or be empty)")
    distill.add_argument("--base", help="model to fine-tune (default: the aligned candidate's)")
    distill.add_argument("--rounds", type=int, default=1, help="rounds of regenerate + fine-tune (default 1)")
    distill.add_argument("--epochs", type=float, default=3, help="default 3")
    distill.add_argument("--batch-size", type=int, default=8, help="default 8")
    distill.add_argument("--lr", type=float, default=1e-4, help="default 1e-4; the skills kit: 5e-4 with --epochs 20")
    distill.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r); default 16")
    distill.add_argument("--method", default="switch", help="the method whose answers are distilled (default switch)")
    distill.add_argument("--limit", type=int, help="the first N test examples in the evaluation")
    distill.add_argument("--adapter", help="the switch method's LoRA adapter (a trained switcher)")
    distill.add_argument("--compare", type=Path,
                         help="a test-split `switchgen eval` folder holding the aligned model and --method: reuse its results")
    distill.add_argument("--concurrency", type=int,
                         help="queries in flight while evaluating (default: the --compare run's, else as switchgen eval)")
    distill.add_argument("--no-progress", action="store_true", help="no progress bars")
    _config_args(distill)

    sub.add_parser("presets", help="list the named presets")
    _eval_parsers(sub)
    return parser


def _eval_parsers(sub) -> None:
    ev = sub.add_parser("eval", help="score methods (single models, switching, baselines) on tasks")
    ev.add_argument("--task", action="append", required=True, help="a task name or YAML (repeatable); see `switchgen tasks`")
    ev.add_argument("--methods", default="", help="comma-separated, e.g. single:P,single:A,switch,random,fixed:A+P+A,oracle")
    ev.add_argument(
        "--patch-sizes", help="the patch-size ablation, e.g. 10,20,30,50,100: switch, random and untuned at each size "
        "(methods switch@10, random@10, ...) beside --methods",
    )
    ev.add_argument("--split", choices=["test", "train"], default="test",
                    help="the tasks' split (default test; train: outputs to distill from, `switchgen distill`)")
    ev.add_argument("--out", type=Path, required=True, help="folder for TASK/METHOD.jsonl, results.json and results.md")
    ev.add_argument("--limit", type=int, help="the first N test examples of each task")
    ev.add_argument("--concurrency", type=int, help="queries run at once (default: as switchgen generate)")
    ev.add_argument("--adapter", help="the switch method's LoRA adapter (a trained switcher)")
    ev.add_argument("--import", dest="imports", action="append", default=[], help="a module that registers methods")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    _config_args(ev)
    sub.add_parser("tasks", help="list the built-in tasks with their data and metric")
    sub.add_parser("lm-eval", help="lm-evaluation-harness's CLI with the switchgen model registered",
                   description="Runs `lm_eval ARGS...` with --model switchgen available, e.g. "
                   "switchgen lm-eval --model switchgen --model_args preset=toy --tasks gsm8k --limit 5", add_help=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:
        return _lm_eval(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SwitchgenError as err:
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine, not switchgen: a full disk, a permission, a vanished file
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("switchgen: interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "presets":
        from switchgen.core.config import DEFAULT_PRESET, preset_names

        for name in preset_names():
            print(name + ("  (default)" if name == DEFAULT_PRESET else ""))
        return 0
    if args.command == "toy-models":
        from switchgen.kits.toy import build_toy_models, default_toy_dir

        paths = build_toy_models(args.directory or default_toy_dir(), overwrite=args.overwrite)
        for name, path in paths.items():
            print(f"{name}\t{path}")
        return 0
    if args.command == "generate":
        return _generate(args)
    if args.command == "chat":
        return _chat(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "api":
        return _api(args)
    if args.command == "merge-switcher":
        from switchgen.graph import load_config
        from switchgen.servers.serve.merge import merge_switcher

        _quiet_transformers()
        print(f"merged switcher in {merge_switcher(load_config(args.config or args.preset), args.output)}")
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "distill":
        return _distill(args)
    if args.command == "analyze":
        from switchgen.analysis import analyze

        report = analyze(args.directory, args.out, method=args.method, threshold=args.correct_threshold)
        print(f"wrote {report} (figures and analysis.json beside it)")
        return 0
    if args.command in ("eval", "tasks"):
        return _eval(args)
    if args.command == "rollouts":
        return _rollouts(args)
    if args.command == "train":
        return _train(args)
    raise AssertionError(args.command)


def _generate(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.generate import check_output, default_output, read_inputs, run_file
    from switchgen.graph import build_graph

    if args.concurrency is not None and args.concurrency < 1:
        raise SwitchgenError(f"--concurrency must be at least 1, got {args.concurrency}")
    inputs = read_inputs(args.input)
    output = args.output or default_output(args.input)
    check_output(output, args.input)  # before any model loads
    config = _config(args)
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers

    check_servers(server_probes(config))  # every server answers before any query runs
    graph = build_graph(config)
    from switchgen.core.records import is_failed, is_retried

    permanent: list[dict] = []

    def note(record: dict) -> None:
        if is_failed(record) and not is_retried(record):
            permanent.append(record)

    start, written, failed = run_file(
        graph, config, inputs, output, progress=not args.no_progress, concurrency=args.concurrency, on_record=note
    )
    refused = len(permanent)
    resumed = f" (resumed after {start})" if start else ""
    print(f"{start + written} records in {output}{resumed}")
    if refused:
        print(
            f"switchgen: {refused} queries are too long for a model; their records hold \"error\" and "
            "\"permanent\": true (a rerun skips them): shorten those inputs",
            file=sys.stderr,
        )
    if failed > refused:
        print(
            f"switchgen: {failed - refused} queries failed on a server; their records hold \"error\": rerun to retry them",
            file=sys.stderr,
        )
    if failed:
        return 1
    return 0


def _eval(args: argparse.Namespace) -> int:
    """`switchgen tasks` and `switchgen eval` (switchgen/evaluation)."""
    from switchgen.tasks import load_task, task_names

    if args.command == "tasks":
        for name in task_names():
            task = load_task(name)
            print(f"{name:<16} {task.metric_name:<12} {task.describe()}")
        return 0
    _quiet_transformers()
    import importlib

    from switchgen.evaluation import prepare, run_eval

    for module in args.imports:
        importlib.import_module(module)
    config = _config(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.patch_sizes:
        from switchgen.evaluation.methods import with_patch_sizes

        methods = with_patch_sizes(methods, _ints(args.patch_sizes))
    if args.adapter and not any(m.partition("@")[0] == "switch" for m in methods):
        raise SwitchgenError("--adapter is the switch method's adapter: add switch to --methods")
    if args.adapter and args.adapter.startswith((".", "/", "~")) and not Path(args.adapter).expanduser().exists():
        raise SwitchgenError(f"--adapter {args.adapter}: no such folder")
    prepared = prepare(args.task, methods, config, args.limit, split=args.split)  # bad input stops here, before any model loads
    seed = 0 if args.seed is None else args.seed
    run_eval(config, prepared, args.out, seed=seed, concurrency=args.concurrency, adapter=args.adapter,
             progress=not args.no_progress, log=lambda line: print(f"switchgen: {line}", file=sys.stderr))
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"records and results in {args.out}")
    return 0


def _lm_eval(argv: list[str]) -> int:
    """lm-eval's own command line, with the switchgen model registered (lm-eval 0.4 discovers no plug-ins)."""
    _quiet_transformers()
    from lm_eval.__main__ import cli_evaluate

    import switchgen.evaluation.lm_eval_plugin  # noqa: F401  (registers --model switchgen)

    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SwitchgenError as err:
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.servers.serve.plan import plan_servers

    if not 0 <= args.port <= 65535:
        raise SwitchgenError(f"--port {args.port} is out of range 0..65535")
    for flag in ("max_input_tokens", "max_total_tokens", "payload_limit", "max_top_n_tokens"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_top_n_tokens" else 1):
            raise SwitchgenError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.output is not None:
        check_writable(args.output, "--output")
    config = _config(args)
    if args.compose:
        from switchgen.servers.serve.compose import compose_config, compose_file

        text = compose_config(config, engine=args.engine, base_port=args.port) if args.print_config else compose_file(
            config, engine=args.engine, base_port=args.port, source=_source_args(args)
        )
        return _write_text(text, args.output)
    plan = plan_servers(config, args.port)
    if args.print_config:
        if args.port == 0:
            raise SwitchgenError("--print-config needs fixed ports: give --port BASE")
        return _write_text(_config_yaml(config, plan, args), args.output)

    from switchgen.servers.serve.run import prepare, serve_forever

    running = prepare(
        plan,
        args.host,
        max_top_n_tokens=args.max_top_n_tokens,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        payload_limit=args.payload_limit,
        api_key=args.api_key or None,
    )

    def ready() -> None:
        auth = "; API key required" if args.api_key else ""
        print(f"switchgen serve: {len(running)} servers (TGI protocol, /v1/completions, /v1/chat/completions{auth}); "
              "Ctrl-C stops them")
        for r in running:
            users = ", ".join(r.plan.users) + (f" (+ adapter {', '.join(r.plan.adapters)})" if r.plan.adapters else "")
            print(f"  {r.plan.url(args.host):<26} {r.plan.model:<24} {users}")
        hint = " ".join(["switchgen serve", *_source_args(args), f"--port {running[0].plan.port}", "--print-config"])
        print(f"a config for these servers: {hint} > my.yaml")
        print("ready", flush=True)

    serve_forever(running, on_ready=ready)
    return 0


def _api(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.api import create_api_app, model_id_for, serve_api
    from switchgen.graph import build_graph
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers

    if args.max_concurrent_requests < 1:
        raise SwitchgenError(f"--max-concurrent-requests must be at least 1, got {args.max_concurrent_requests}")
    config = _config(args)
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


def _source_args(args: argparse.Namespace) -> list[str]:
    source = [f"--config {args.config}"] if args.config else [f"--preset {args.preset}"] if args.preset else []
    for flag in ("seed", "max_new_tokens", "patch_size"):
        if getattr(args, flag) is not None:
            source.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    return source


def _config_yaml(config, plan, args: argparse.Namespace) -> str:
    import yaml

    from switchgen.servers.serve.plan import served_config

    data = served_config(config, plan, engine=args.engine, host=args.host)
    if "switcher" in data and "top_n_tokens" not in data["switcher"]:
        data["switcher"]["top_n_tokens"] = args.max_top_n_tokens  # these servers allow it: the exact distribution
    head = f"# Generated by: switchgen serve {' '.join(_source_args(args))} --port {args.port} --print-config\n"
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _write_text(text: str, output: Path | None) -> int:
    if output is None:
        sys.stdout.write(text)
        return 0
    atomic_write_text(output, text)  # no half-written file
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.bench import markdown, run_bench, write_json
    from switchgen.graph import load_config

    check_writable(args.json, "--json")  # before minutes of benchmarking
    if args.rollouts:
        from switchgen.bench import rollouts_markdown, run_rollouts_bench

        report = run_rollouts_bench(
            load_config(args.config or args.preset), budget=args.budget, instances=args.instances, k=args.k,
            reps=args.reps, concurrency=_ints(args.concurrency), device=args.device,
            progress=lambda line: print(line, file=sys.stderr),
        )
        write_json(report, args.json)
        print(rollouts_markdown(report))
        print(f"\nraw figures: {args.json}")
        return 0
    report = run_bench(
        load_config(args.config or args.preset),
        budget=args.budget,
        reps=args.reps,
        load_reps=args.load_reps,
        budgets=_ints(args.budgets),
        concurrency=_ints(args.concurrency),
        device=args.device,
        progress=lambda line: print(line, file=sys.stderr),
    )
    write_json(report, args.json)
    print(markdown(report))
    print(f"\nraw figures: {args.json}")
    return 0


def _rollouts(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from concurrent.futures import ThreadPoolExecutor

    from switchgen.graph import build_graph
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers
    from switchgen.tasks import load_task
    from switchgen.training.rollouts import (
        Rollouts,
        RolloutSettings,
        instances,
        rollout_config,
        run_rollouts,
        task_scorer,
    )

    settings = RolloutSettings(k=args.k, seed=0 if args.seed is None else args.seed)
    settings.check()
    if args.concurrency < 1:
        raise SwitchgenError(f"--concurrency must be at least 1, got {args.concurrency}")
    check_writable(args.out, "--out")  # before any model loads
    task = load_task(args.task)
    records = instances(task.records("train"), args.instances)
    scorer = task_scorer(task.metric())  # a bad metric (or a reward model that cannot load) fails first
    config = _config(args)
    check_servers(server_probes(rollout_config(config)))
    graph = build_graph(rollout_config(config))
    pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="switchgen-rollout") if args.concurrency > 1 else None
    try:
        rollouts = Rollouts(graph, config, scorer, settings, task=task.name, pool=pool)
        result = run_rollouts(rollouts, records, args.out, concurrency=args.concurrency, progress=not args.no_progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    resumed = f" (resumed after {result.start})" if result.start else ""
    print(f"{result.start + result.written} records in {args.out}{resumed}; {result.tokens} tokens in "
          f"{result.seconds:.1f} s ({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s)")
    if result.failed:
        print(f"switchgen: {result.failed} instances failed on a server; their records hold \"error\": rerun to retry",
              file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.training.train import TrainSettings, snippet, summary, train_switcher

    for name in ("epochs", "lr"):
        if getattr(args, name) <= 0:
            raise SwitchgenError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.batch_size < 1 or args.lora_r < 1:
        raise SwitchgenError("--batch-size and --lora-r must be at least 1")
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lora_r=args.lora_r,
                             min_margin=args.min_margin, keep_uninformative=args.keep_uninformative,
                             eval_fraction=args.eval_fraction, seed=args.seed)
    report = train_switcher(args.data, args.out, base=args.base, settings=settings, merge=args.merge,
                            progress=not args.no_progress)
    if report:
        print(summary(report))
        print(f"\nadapter in {report['adapter']}; use it with this configuration:\n")
        print(snippet(report))
    return 0


def _chat(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.chat import run_chat

    config = _config(args)
    return run_chat(config, db=args.db, thread=args.thread, color=args.color, review=args.review)


def _config(args: argparse.Namespace) -> SwitchConfig:
    """The configuration the command names (--preset or --config) with the flags of _config_args applied."""
    from switchgen.graph import load_config

    for flag in ("patch_size", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SwitchgenError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise SwitchgenError(f"--seed must be in 0..2**64-1, got {args.seed}")
    try:
        return load_config(
            args.config or args.preset, seed=args.seed, max_new_tokens=args.max_new_tokens, patch_size=args.patch_size
        )
    except SwitchgenError as err:  # a flag that conflicts with the file (patch size over the budget, say)
        flags = [f"--{f.replace('_', '-')} {getattr(args, f)}" for f in ("patch_size", "max_new_tokens", "seed")
                 if getattr(args, f) is not None]
        raise type(err)(f"{err} (with {' '.join(flags)})" if flags else str(err)) from None


def _distill(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.training.distill import DistillSettings, distill, summary

    settings = DistillSettings(rounds=args.rounds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               lora_r=args.lora_r, seed=0 if args.seed is None else args.seed, method=args.method,
                               limit=args.limit, concurrency=args.concurrency)
    report = distill(_config(args), args.task, args.outputs, args.out, base=args.base, settings=settings,
                     adapter=args.adapter, compare=args.compare, progress=not args.no_progress,
                     log=lambda line: print(f"switchgen: {line}", file=sys.stderr))
    print(summary(report))
    print(f"distilled model and report (switchgen-distill.json) in {args.out}")
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SwitchgenError(f"expected comma-separated integers, got {text!r}") from None


def _quiet_transformers() -> None:
    """Loading bars and warnings from transformers would bury our progress bar."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging

    logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
