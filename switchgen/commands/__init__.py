"""The `switchgen` subcommands: one module each, holding its flags (`register`) and what it runs (`run`).

A module registers its parser with `set_defaults(func=...)`; `switchgen/cli.py` dispatches on it.
The work itself lives below (generate.py, the graph, servers/, training/, evaluation/, analysis/).
"""

from switchgen.commands import (
    analyze,
    api,
    bench,
    catalog,
    chat,
    distill,
    eval,
    generate,
    lm_eval,
    rollouts,
    serve,
    train,
)

# In the order `switchgen --help` lists them.
COMMANDS = (generate, chat, serve, api, bench, rollouts, train, eval, analyze, distill, lm_eval, catalog)
