"""A candidate's patch: render the trace for it, write one patch, append it (one generator node per candidate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputTooLong
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


class Generator:
    """Candidate `index` writing one patch under `config`: at most `patch_size` tokens, fewer where the budget ends.

    nodes/turn.py wraps it into the LangGraph node (context, turns, the answer message): its
    `finish` adds the answer to the update, before the patch's run (nodes/tracing.py) closes.
    """

    def __init__(self, config: SwitchConfig, index: int, backend: Backend) -> None:
        self.config, self.index, self.backend = config, index, backend
        self.candidate = config.candidates[index]
        self.view = config.candidate_view(index, has_chat_template(backend.tokenizer))
        self.__name__ = self.candidate.name

    def __call__(self, state: TurnState, finish_update: Finish | None = None) -> dict:
        config, candidate = self.config, self.candidate
        segments = state.get("segments") or []
        used = state.get("tokens_used") or 0
        remaining = config.max_new_tokens - used
        cue = config.cue if config.objective and remaining <= config.patch_size else ""
        prompt = self.prompt(state, cue)
        params = self.params(state, remaining)
        invocation: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "greedy": params.greedy}
        if not params.greedy:
            invocation.update(temperature=params.temperature, top_p=params.top_p)
        run = PatchRun.start(candidate=candidate.name, model=candidate.model, patch=len(segments), prompt=prompt,
                             message_id=answer_id(state.get("turn")), invocation=invocation)
        stream = PatchStream(candidate.name, len(segments), run)  # tokens with their author (custom, messages)
        stream.emit(cue)
        try:
            patch = self.backend.generate(prompt, params, on_text=stream.emit if stream.listening else None)
        except InputTooLong as err:
            run.error(err)
            if not segments:
                raise  # the question itself does not fit: nothing to keep
            return finish_update({"done": True}) if finish_update else {"done": True}  # a server's context is full
        except BaseException as err:
            run.error(err)
            raise
        stream.complete(cue + patch.text)
        finish = "budget" if patch.context_full else patch.finish_reason  # the model holds no more: the answer ends
        update = self.update(state, cue + patch.text, patch.tokens, finish)
        if finish_update is not None:
            update = finish_update(update)
        for message in update.get("messages", []):
            run.close_answer(message)
        if run.run is not None:
            prompt_tokens = len(self.backend.tokenizer.encode(prompt, add_special_tokens=False))
            run.end(text=update["segments"][0]["text"], input_tokens=prompt_tokens, output_tokens=patch.tokens,
                    finish_reason=update["segments"][0]["finish_reason"], prefilled=patch.prefilled)
        return update

    def prompt(self, state: TurnState, cue: str) -> str:
        """The text the candidate continues: the conversation and the trace, in its view."""
        texts = [s["text"] for s in state.get("segments") or []]
        if cue:  # the reference appends the cue to the trace's last segment
            texts = [*texts[:-1], texts[-1] + cue] if texts else [cue]
        history = conversation_history(state.get("messages"))
        return candidate_prompt(self.backend.tokenizer, self.view, state["query"], texts, self.candidate.plain_template,
                                history)

    def params(self, state: TurnState, remaining: int) -> GenerationParams:
        config, sampling = self.config, self.config.sampling
        stops = tuple(self.candidate.stop)
        if self.view == "plain" and conversation_history(state.get("messages")) and PLAIN_TURN_STOP not in stops:
            stops += (PLAIN_TURN_STOP,)
        size = min(config.patch_size, remaining)
        return GenerationParams(
            max_new_tokens=size,
            # A patch ends where its text is complete: a character split by the patch's end is
            # finished by its author (<= 3 more tokens, within the budget), not carried over
            # to a next author whose tokenizer may not even have its remaining bytes.
            finish_character=min(MAX_CHARACTER_TOKENS - 1, remaining - size) if sampling.finish_characters else 0,
            greedy=sampling.greedy,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            # per query: a seeded batch is not one sample repeated
            seed=derive_seed(config.seed, "patch", state["query"], len(state.get("segments") or [])),
            stop=stops,
            ignore_eos=sampling.ignore_eos,
        )

    def update(self, state: TurnState, text: str, tokens: int, finish_reason: str) -> dict:
        """The state update of a written patch: the segment, the budget used, the output, whether the turn ends."""
        used = (state.get("tokens_used") or 0) + tokens
        finish = "budget" if finish_reason == "length" and used >= self.config.max_new_tokens else finish_reason
        segment: Segment = {"candidate": self.candidate.name, "index": self.index, "text": text, "tokens": tokens,
                            "finish_reason": finish}  # type: ignore[typeddict-item]
        return {"segments": [segment], "tokens_used": used, "output": (state.get("output") or "") + text,
                "done": finish != "length"}


def make_generator(config: SwitchConfig, index: int, backend: Backend) -> Generator:
    """Candidate `index`'s patch under `config` (nodes/turn.py builds one per resolved configuration)."""
    return Generator(config, index, backend)
