"""A candidate's patch: render the trace for it, write one patch, append it (one generator node per candidate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from switchgen.core.config import SwitchConfig
from switchgen.core.prompts import PLAIN_TURN_STOP, candidate_prompt, has_chat_template
from switchgen.core.seeds import derive_seed
from switchgen.core.trace import Segment
from switchgen.nodes.messages import conversation_history
from switchgen.nodes.state import TurnState
from switchgen.nodes.streaming import PatchStream
from switchgen.nodes.tracing import PatchRun, answer_id
from switchgen.servers.base import Backend, GenerationParams

MAX_CHARACTER_TOKENS = 4  # a UTF-8 character is at most 4 bytes: at most 4 byte tokens
Finish = Callable[[dict], dict]


def make_generator(config: SwitchConfig, index: int, backend: Backend) -> Callable[..., dict]:
    """Candidate `index` writing one patch under `config`: at most `patch_size` tokens, fewer where the budget ends.

    nodes/turn.py wraps it into the LangGraph node (context, turns, the answer message): its
    `finish` adds the answer to the update, before the patch's run (nodes/tracing.py) closes.
    """
    candidate = config.candidates[index]
    view = config.candidate_view(index, has_chat_template(backend.tokenizer))
    sampling = config.sampling
    budget = config.max_new_tokens

    def generate(state: TurnState, finish_update: Finish | None = None) -> dict:
        segments = state.get("segments") or []
        used = state.get("tokens_used") or 0
        remaining = budget - used
        texts = [s["text"] for s in segments]
        cue = config.cue if config.objective and remaining <= config.patch_size else ""
        if cue:  # the reference appends the cue to the trace's last segment
            texts = [*texts[:-1], texts[-1] + cue] if texts else [cue]
        history = conversation_history(state.get("messages"))
        stops = tuple(candidate.stop)
        if view == "plain" and history and PLAIN_TURN_STOP not in stops:
            stops += (PLAIN_TURN_STOP,)
        prompt = candidate_prompt(backend.tokenizer, view, state["query"], texts, candidate.plain_template, history)
        size = min(config.patch_size, remaining)
        params = GenerationParams(
            max_new_tokens=size,
            # A patch ends where its text is complete: a character split by the patch's end is
            # finished by its author (<= 3 more tokens, within the budget), not carried over
            # to a next author whose tokenizer may not even have its remaining bytes.
            finish_character=min(MAX_CHARACTER_TOKENS - 1, remaining - size) if sampling.finish_characters else 0,
            greedy=sampling.greedy,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=derive_seed(config.seed, "patch", state["query"], len(segments)),  # per query: a seeded batch is not one sample repeated
            stop=stops,
            ignore_eos=sampling.ignore_eos,
        )
        invocation: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "greedy": params.greedy}
        if not params.greedy:
            invocation.update(temperature=params.temperature, top_p=params.top_p)
        run = PatchRun.start(candidate=candidate.name, model=candidate.model, patch=len(segments), prompt=prompt,
                             message_id=answer_id(state.get("turn")), invocation=invocation)
        stream = PatchStream(candidate.name, len(segments), run)  # tokens with their author (custom, messages)
        stream.emit(cue)
        try:
            patch = backend.generate(prompt, params, on_text=stream.emit)
        except BaseException as err:
            run.error(err)
            raise
        stream.complete(cue + patch.text)
        used += patch.tokens
        finish = "budget" if patch.finish_reason == "length" and used >= budget else patch.finish_reason
        segment: Segment = {
            "candidate": candidate.name,
            "index": index,
            "text": cue + patch.text,
            "tokens": patch.tokens,
            "finish_reason": finish,
        }
        update: dict = {
            "segments": [segment],
            "tokens_used": used,
            "output": (state.get("output") or "") + segment["text"],
            "done": finish != "length",
        }
        if finish_update is not None:
            update = finish_update(update)
        for message in update.get("messages", []):
            run.close_answer(message)
        if run.run is not None:
            prompt_tokens = len(backend.tokenizer.encode(prompt, add_special_tokens=False))
            run.end(text=segment["text"], input_tokens=prompt_tokens, output_tokens=patch.tokens,
                    finish_reason=finish, prefilled=patch.prefilled)
        return update

    generate.__name__ = candidate.name
    return generate
