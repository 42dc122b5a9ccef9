"""A reward model as a metric: any Hugging Face sequence-classification model scores (query, output).

Loaded once per run (when the task's metric is made), scored in batches, and every (query, output)
pair's score is cached, so methods that write the same answer (or a rerun in the same process) do
not score it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from switchgen.core.errors import ModelLoadError
from switchgen.tasks.metrics import Metric


class RewardMetric(Metric):
    """The reward model's logit (`label_index`) for the query as the user turn and the output as the reply.

    Range: (-inf, inf), the model's raw score; higher is better. With a chat template the pair is
    rendered through it (user, assistant); without one it is encoded as a text pair.
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        max_length: int = 4096,
        device: str = "auto",
        dtype: str = "auto",
        label_index: int = 0,
    ) -> None:
        super().__init__("reward", self._unused, (float("-inf"), float("inf")), f"reward model {model}")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_name, self.batch_size, self.max_length, self.label_index = model, batch_size, max_length, label_index
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"reward model {model!r} could not be loaded: {str(err).splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device
        self.cache: dict[tuple[str, str], float] = {}
        self.forward_batches = 0  # how many batches went through the model (tests read it)

    @staticmethod
    def _unused(output: str, reference: Any) -> float:
        raise AssertionError("RewardMetric scores in batches")

    def _encode(self, pairs: Sequence[tuple[str, str]]):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": q}, {"role": "assistant", "content": o}], tokenize=False
                )
                for q, o in pairs
            ]
            return tok(texts, add_special_tokens=False, padding=True, truncation=True,
                       max_length=self.max_length, return_tensors="pt")
        return tok([q for q, _ in pairs], [o for _, o in pairs], padding=True, truncation=True,
                   max_length=self.max_length, return_tensors="pt")

    def score(self, outputs: Sequence[str], records: Sequence[dict[str, Any]]) -> list[float]:
        import torch

        if len(outputs) != len(records):
            raise ValueError(f"{len(outputs)} outputs for {len(records)} records")
        pairs = [(r["query"], o or "") for o, r in zip(outputs, records, strict=True)]
        todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        for i in range(0, len(todo), self.batch_size):
            batch = todo[i : i + self.batch_size]
            enc = self._encode(batch).to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits
            self.forward_batches += 1
            for pair, value in zip(batch, logits[:, self.label_index].float().tolist(), strict=True):
                self.cache[pair] = value
        return [self.cache[p] for p in pairs]
