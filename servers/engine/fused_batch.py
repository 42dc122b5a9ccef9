"""The running rows of stacked checkpoints (fused.py) in fixed, preallocated buffers, stepped by one pass.

Slot s = model * per_model + j. Every row's cache ends at column `end` (shorter ones start later:
left padding, masked out), so a step writes column `end` for all slots at once. The step reads and
writes only fixed buffers: the KV cache, the mask, and per slot the input token, its position, the
sampling settings and the counter of the token being drawn; it samples every slot's next token on
the device into the token buffer (the next step's input) and advances positions, counters and the
column itself. The host reads the sampled tokens once per step and touches the buffers only when
rows join or leave. So on CUDA the step is captured once per (models, slots, attention window) and
replayed (graphs.py); buffers are reallocated only when slots or columns run out, dropping the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.fused import StackedModels, attention
from switchgen.servers.engine.graphs import StepGraphs
from switchgen.servers.engine.sampling import sample

_MIN_COLUMNS = 64  # the cache's capacity grows in doublings from this
_WINDOW = 64  # on CUDA a step attends over a power-of-two window of columns, at least this: few graphs


@dataclass
class Joining:
    """A row entering the batch: its cache, the token it feeds next and how it samples."""

    req: object
    model: int
    kv: torch.Tensor  # [layers, 2, kv_heads, length, head_dim]
    token: int
    counter: int  # the index (in its request) of the token the next step draws
    params: GenerationParams
    key: int


class _Buffers:
    """Everything a step reads or writes, on the device; identity-stable until reallocated."""

    def __init__(self, stack: StackedModels, slots: int, cols: int) -> None:
        dev = stack.device
        self.slots, self.cols = slots, cols
        self.kv = torch.zeros(
            len(stack.layers), 2, slots, stack.kv_heads, cols, stack.head_dim, dtype=stack.dtype, device=dev
        )
        self.mask = torch.zeros(slots, cols, dtype=torch.bool, device=dev)
        self.occupied = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.counters = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.keys = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.greedy = torch.ones(slots, dtype=torch.bool, device=dev)
        self.temperature = torch.ones(slots, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=dev)
        self.col = torch.zeros(1, dtype=torch.int64, device=dev)

    def per_slot(self) -> list[torch.Tensor]:
        """The buffers indexed by slot alone (moved with their row on a relayout)."""
        return [self.tokens, self.positions, self.counters, self.keys, self.greedy, self.temperature, self.top_p]


class FusedBatch:
    """Running rows of every stacked model in one KV cache, stepped by one forward pass (see the module)."""

    def __init__(self, stack: StackedModels) -> None:
        self.stack = stack
        self.cuda = stack.device.type == "cuda"
        self.graphs = StepGraphs(stack.device)
        self.per_model = 0
        self.rows: list = []  # slot -> request or None
        self.starts: list[int] = []
        self.end = 0
        self.buf = _Buffers(stack, 0, 0)
        self._version = stack.version

    @property
    def live(self) -> list[int]:
        return [s for s, r in enumerate(self.rows) if r is not None]

    def used(self, model: int) -> int:
        return sum(r is not None for r in self.rows[model * self.per_model : (model + 1) * self.per_model])

    def _free(self, model: int) -> list[int]:
        return [s for s in range(model * self.per_model, (model + 1) * self.per_model) if self.rows[s] is None]

    def _grown(self, per_model: int) -> int:
        """Slots per model after growing from `per_model`: powers of two on CUDA (one graph per bucket)."""
        return 1 << per_model.bit_length() if self.cuda else per_model + 1

    def relayout(self, per_model: int, need: int) -> None:
        """Lay the live rows out again with `per_model` slots per model, every row ending at the new `end`
        (at least `need`): in place when the buffers are large enough, else in new ones (dropping graphs)."""
        st, buf = self.stack, self.buf
        old_per = max(1, self.per_model)
        live = self.live
        lengths = [self.end - self.starts[s] for s in live]
        end = max([need, *lengths, 0])
        cols = max(buf.cols, _MIN_COLUMNS)
        while cols < end + max(16, end // 4):  # room to step a while before the next relayout
            cols *= 2
        slots = len(st.models) * per_model
        packed = [0] * len(st.models)  # shrinking packs each model's rows to the front; growing keeps slots
        target = []
        for s in live:
            model, j = divmod(s, old_per)
            if per_model < old_per:
                j, packed[model] = packed[model], packed[model] + 1
            target.append(model * per_model + j)
        caches = [buf.kv[:, :, s, :, self.starts[s] : self.end].clone() for s in live]
        index = torch.tensor(live, dtype=torch.int64, device=st.device)
        states = [t.index_select(0, index) for t in buf.per_slot()]
        if (slots, cols) != (buf.slots, buf.cols) or self._version != st.version:
            self.buf, self._version = _Buffers(st, slots, cols), st.version
            self.graphs.clear()
        buf = self.buf
        buf.mask.zero_()
        buf.occupied.zero_()
        rows: list = [None] * slots
        starts = [end] * slots
        for t, s, cache in zip(target, live, caches, strict=True):
            n = cache.shape[3]
            buf.kv[:, :, t, :, end - n : end] = cache
            buf.mask[t, end - n : end] = True
            rows[t], starts[t] = self.rows[s], end - n
        placed = torch.tensor(target, dtype=torch.int64, device=st.device)
        for t, state in zip(buf.per_slot(), states, strict=True):
            t.index_copy_(0, placed, state)
        buf.occupied.index_fill_(0, placed, True)
        buf.col.fill_(end)
        self.rows, self.starts, self.end, self.per_model = rows, starts, end, per_model

    def compact(self) -> None:
        """Give back slots when every model runs few of its own: free slots still cost compute
        (on CUDA only at a quarter, so the batch does not hop between graph buckets).

        Moves rows to other slots: call it before reading slot numbers for a step.
        """
        busiest = max(self.used(m) for m in range(len(self.stack.models)))
        if self.per_model > 1 and busiest <= self.per_model // (4 if self.cuda else 2):
            self.relayout(self._grown(busiest - 1) if self.cuda else max(busiest, 1), 0)

    def add(self, row: Joining) -> None:
        """Put a row into a free slot of its model, with its cache and its next input."""
        length = row.kv.shape[3]
        free = self._free(row.model)
        if not free or length > self.end or self.end + 1 >= self.buf.cols:
            self.relayout(self.per_model if free else self._grown(self.per_model), length)
            free = self._free(row.model)
        s, buf = free[0], self.buf
        start = self.end - length
        buf.kv[:, :, s, :, start : self.end] = row.kv
        buf.mask[s] = False
        buf.mask[s, start : self.end] = True
        buf.occupied[s] = True
        p = row.params
        for t, value in zip(
            buf.per_slot(),
            (row.token, length, row.counter, row.key, p.greedy, float(p.temperature), float(p.top_p)),
            strict=True,
        ):
            t[s] = value
        self.rows[s], self.starts[s] = row.req, start

    def remove(self, slot: int) -> torch.Tensor:
        """Free `slot`; its row's cache, unpadded ([layers, 2, kv_heads, tokens, head_dim]), for the prefix-cache pool."""
        cache = self.buf.kv[:, :, slot, :, self.starts[slot] : self.end].clone()
        self.rows[slot] = None
        self.buf.mask[slot] = False
        self.buf.occupied[slot] = False
        return cache

    def models_in_use(self) -> slice:
        """The stacked models with running rows (a contiguous range): a step computes only those."""
        used = [s // self.per_model for s in self.live]
        return slice(min(used), max(used) + 1)

    @torch.inference_mode()
    def step(self) -> tuple[slice, torch.Tensor]:
        """Feed every slot its next token; sample the one after it. Returns the slots stepped and their
        logits; the sampled tokens are in `buf.tokens` (FAILED for a row whose logits hold NaN)."""
        if self.end + 1 > self.buf.cols:
            self.relayout(self.per_model, 0)  # keeps every row's slot
        models = self.models_in_use()
        window = self.end + 1
        if self.cuda:  # a power of two (within the capacity): one graph serves many steps
            window = min(self.buf.cols, max(_WINDOW, 1 << self.end.bit_length()))
        key = (models.start, models.stop, self.per_model, window)
        logits = self.graphs.run(key, lambda: self._compute(models, window))
        self.end += 1
        return slice(models.start * self.per_model, models.stop * self.per_model), logits

    def _compute(self, models: slice, window: int) -> torch.Tensor:
        """The step on the fixed buffers, device operations only (what a CUDA graph captures)."""
        st, buf, per = self.stack, self.buf, self.per_model
        slots = slice(models.start * per, models.stop * per)
        n_models = models.stop - models.start
        col, mask, kv = buf.col, buf.mask[slots], buf.kv[:, :, slots]
        mask.index_fill_(1, col, True)  # free slots see only the column they write
        visible = mask[:, None, None, :window]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kv[i, 0].index_copy_(2, col, k)
            kv[i, 1].index_copy_(2, col, v)
            return attention(q, kv[i, 0, :, :, :window], kv[i, 1, :, :, :window], visible, st.scale)

        shape = (n_models, per)
        h = st.run(buf.tokens[slots].view(shape), buf.positions[slots].view(shape), attend, per, models)
        logits = st.logits(h, models).view(n_models * per, -1)
        buf.tokens[slots] = sample(
            logits, buf.greedy[slots], buf.temperature[slots], buf.top_p[slots], buf.keys[slots], buf.counters[slots]
        )
        mask.index_copy_(1, col, buf.occupied[slots, None])
        buf.positions[slots] += 1
        buf.counters[slots] += 1
        col += 1
        return logits
