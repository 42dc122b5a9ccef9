"""switchgen as an lm-evaluation-harness model: `--model switchgen --model_args preset=NAME`.

Generative tasks only: `generate_until` runs each request's context through the Switch Generation
graph, with the request's `until` strings as every candidate's stop strings (and cut from the
joined answer, since a stop string may straddle two authors' patches) and `max_gen_toks` as the
token budget. Sampling follows the configuration (the preset's greedy or temperature settings);
the harness's `do_sample`/`temperature` are not applied. Switching writes text, it does not score
given continuations: `loglikelihood` and `loglikelihood_rolling` raise.

Model args: preset or config, seed, max_new_tokens (default budget when a task gives no
max_gen_toks), patch_size, concurrency (requests in flight; servers batch them), adapter
(the switcher's LoRA adapter).

lm-eval 0.4 has no plug-in discovery for models, so the model is registered when this module is
imported: run the harness's own CLI through `switchgen lm-eval ARGS...` (same arguments as
`lm_eval`), or import this module before `lm_eval.simple_evaluate(model="switchgen", ...)`.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from switchgen.core.errors import InputError, UnsupportedError

DEFAULT_BUDGET = 256


@register_model("switchgen")
class SwitchgenLM(LM):
    """Generation through the Switch Generation graph; every checkpoint loaded once per harness run."""

    def __init__(
        self,
        preset: str | None = None,
        config: str | None = None,
        seed: int | None = 0,
        max_new_tokens: int | None = None,
        patch_size: int | None = None,
        concurrency: int = 1,
        adapter: str | None = None,
        **harness: Any,  # batch_size, device, ... from the harness: the configuration decides
    ) -> None:
        super().__init__()
        from switchgen.graph import load_config
        from switchgen.graph.variants import GraphVariants
        from switchgen.servers.engine.local import LocalEngine

        if preset and config:
            raise InputError("give preset or config, not both")
        self.config = load_config(config or preset, seed=None if seed is None else int(seed), patch_size=patch_size)
        if adapter:
            data = self.config.model_dump()
            data["switcher"]["adapter"] = adapter
            self.config = load_config(data)
        self.default_budget = int(max_new_tokens) if max_new_tokens else DEFAULT_BUDGET
        self.concurrency = int(concurrency)
        self.engine = LocalEngine()
        self._graphs = GraphVariants(self.config, self.engine)

    def _graph(self, until: tuple[str, ...]):
        """One graph per set of stop strings, all over the same engine (graph/variants.py: nothing loads twice)."""
        return self._graphs.get(until)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from switchgen.core.jobs import in_order
        from switchgen.servers.stops import cut_at_stop

        def one(request) -> str:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            budget = int(kwargs.get("max_gen_toks") or self.default_budget)
            ctx: dict[str, Any] = {"max_new_tokens": budget}
            if self.config.patch_size > budget:
                ctx["patch_size"] = budget
            result = self._graph(until).invoke({"query": context}, context=ctx)
            return cut_at_stop(result["output"], until)[0]

        answers = []
        with tqdm(total=len(requests), desc="switchgen", disable=disable_tqdm) as bar:
            for _, text in in_order(list(requests), one, self.concurrency):
                answers.append(text)
                bar.update(1)
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise UnsupportedError(
            "switchgen generates (several checkpoints write one answer); it cannot score given continuations: "
            "use generative tasks (output_type: generate_until), e.g. gsm8k, bbh_cot_zeroshot, mmlu_pro"
        )

    def loglikelihood_rolling(self, requests) -> list[float]:
        raise UnsupportedError(
            "switchgen generates; it cannot compute rolling log-likelihoods (perplexity tasks): use generative tasks"
        )
