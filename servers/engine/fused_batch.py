"""The running rows of stacked checkpoints (fused.py) in fixed, preallocated buffers, stepped by one pass.

A static KV cache: slot s = model * per_model + j holds one row's keys and values from column 0, so
a row's next token writes the column at its position and sees the columns before it. A step reads
and writes only fixed buffers: the cache, and per slot the input token, its position, its sampling
settings and the counter of the token being drawn. It samples every slot's next token on the device
into the token buffer (the next step's input) and advances the positions and counters of the
occupied slots. The host reads the sampled tokens once per step and touches the buffers only when
rows join or leave. So on CUDA the step is captured once per (models, slots, attention window) and
replayed (graphs.py); the buffers are reallocated only when slots or columns run out (or a model
joins the stack), which drops the captured graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.fused import StackedModels, attention, attention_bias
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
        self.capacity, self.cols = slots, cols
        self.kv = torch.zeros(
            len(stack.layers), 2, slots, stack.kv_heads, cols, stack.head_dim, dtype=stack.dtype, device=dev
        )
        self.occupied = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.counters = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.keys = torch.zeros(slots, dtype=torch.int64, device=dev)
        self.greedy = torch.ones(slots, dtype=torch.bool, device=dev)
        self.temperature = torch.ones(slots, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=dev)

    def per_slot(self) -> list[torch.Tensor]:
        """The buffers indexed by slot alone (moved with their row on a relayout)."""
        return [self.occupied, self.tokens, self.positions, self.counters, self.keys, self.greedy,
                self.temperature, self.top_p]


class FusedBatch:
    """Running rows of every stacked model in one static KV cache, stepped by one forward pass (see the module)."""

    def __init__(self, stack: StackedModels) -> None:
        self.stack = stack
        self.graphs = StepGraphs(stack.device)
        self.graphed = self.graphs.enabled  # captured steps: shapes in buckets, every slot sampled
        self.per_model = 0
        self.rows: list = []  # slot -> request or None
        self.lengths: list[int] = []  # slot -> tokens its cache holds (its next position)
        self.buf = _Buffers(stack, 0, 0)
        self._version = stack.version

    @property
    def live(self) -> list[int]:
        return [s for s, r in enumerate(self.rows) if r is not None]

    def used(self, model: int) -> int:
        return sum(r is not None for r in self.rows[model * self.per_model : (model + 1) * self.per_model])

    def _free(self, model: int) -> list[int]:
        return [s for s in range(model * self.per_model, (model + 1) * self.per_model) if self.rows[s] is None]

    def _bucket(self, rows: int) -> int:
        """Slots per model for `rows` rows: the next power of two when steps are captured (one graph per
        bucket), else exactly `rows` (free slots cost compute; relayouts are in place and reserved once per
        admission, so growing by what is needed is cheap)."""
        if self.graphed:
            return 1 << (rows - 1).bit_length() if rows > 1 else 1
        return max(1, rows)

    def reserve(self, joining: dict[int, int], longest: int) -> None:
        """Make room, in one relayout, for rows about to join (how many per model) up to `longest` tokens."""
        need = max(self.used(m) + joining.get(m, 0) for m in range(len(self.stack.models)))
        if need > self.per_model or longest + 1 > self.buf.cols or self._version != self.stack.version:
            self.relayout(max(self.per_model, self._bucket(need)), longest + 1)

    def relayout(self, per_model: int, need: int = 0) -> None:
        """Lay the live rows out with `per_model` slots per model and room for `need` columns (growing keeps
        each row's index in its model's slots; shrinking packs them to the front). In place while the
        buffers are big enough (captured graphs stay valid), else in new ones (dropping the graphs)."""
        st, buf, old_per = self.stack, self.buf, max(1, self.per_model)
        live = self.live
        longest = max([need, *(self.lengths[s] for s in live)])
        cols = max(buf.cols, _MIN_COLUMNS)
        while cols < longest + max(16, longest // 4):  # room to step a while before growing again
            cols *= 2
        packed = [0] * len(st.models)
        target = []
        for s in live:
            model, j = divmod(s, old_per)
            if per_model < old_per:
                j, packed[model] = packed[model], packed[model] + 1
            target.append(model * per_model + j)
        slots = len(st.models) * per_model
        fresh = slots > buf.capacity or cols > buf.cols or self._version != st.version
        moved = [(t, s) for t, s in zip(target, live, strict=True) if fresh or t != s]
        caches = [buf.kv[:, :, s, :, : self.lengths[s]].clone() for _, s in moved]  # before any is overwritten
        index = torch.tensor(live, dtype=torch.int64, device=st.device)
        states = [t.index_select(0, index) for t in buf.per_slot()]
        if fresh:
            capacity = 1 << (slots - 1).bit_length() if slots > 1 else 1
            self.buf, self._version = _Buffers(st, capacity, cols), st.version
            self.graphs.clear()
        buf = self.buf
        buf.occupied.zero_()
        buf.positions.zero_()  # a free slot rewrites its own column 0, seen by no row
        rows: list = [None] * slots
        lengths = [0] * slots
        for (t, _), cache in zip(moved, caches, strict=True):
            buf.kv[:, :, t, :, : cache.shape[3]] = cache
        for t, s in zip(target, live, strict=True):
            rows[t], lengths[t] = self.rows[s], self.lengths[s]
        placed = torch.tensor(target, dtype=torch.int64, device=st.device)
        for t, state in zip(buf.per_slot(), states, strict=True):
            t.index_copy_(0, placed, state)
        self.rows, self.lengths, self.per_model = rows, lengths, per_model

    def compact(self) -> None:
        """Give back slots when every model runs few of its own: free slots still cost compute
        (with captured steps only at a quarter, so the batch does not hop between graph buckets)."""
        busiest = max(self.used(m) for m in range(len(self.stack.models)))
        if self.per_model > 1 and busiest <= self.per_model // (4 if self.graphed else 2):
            self.relayout(self._bucket(busiest))

    def add(self, row: Joining) -> None:
        """Put a row into a free slot of its model, with its cache and its next input."""
        length = row.kv.shape[3]
        free = self._free(row.model)
        if not free or length + 1 > self.buf.cols or self._version != self.stack.version:
            self.relayout(self.per_model if free else self._bucket(self.per_model + 1), length + 1)
            free = self._free(row.model)
        s, buf = free[0], self.buf
        buf.kv[:, :, s, :, :length] = row.kv
        p = row.params
        values = (True, row.token, length, row.counter, row.key, p.greedy, float(p.temperature), float(p.top_p))
        for t, value in zip(buf.per_slot(), values, strict=True):
            t[s] = value
        self.rows[s], self.lengths[s] = row.req, length

    def remove(self, slot: int) -> torch.Tensor:
        """Free `slot`; its row's cache ([layers, 2, kv_heads, tokens, head_dim]) for the prefix-cache pool."""
        cache = self.buf.kv[:, :, slot, :, : self.lengths[slot]].clone()
        self.rows[slot], self.lengths[slot] = None, 0
        self.buf.occupied[slot] = False
        self.buf.positions[slot] = 0
        return cache

    def models_in_use(self) -> slice:
        """The stacked models with running rows (a contiguous range): a step computes only those."""
        used = [s // self.per_model for s in self.live]
        return slice(min(used), max(used) + 1)

    @torch.inference_mode()
    def step(self) -> tuple[slice, torch.Tensor]:
        """Feed every slot its next token; sample the one after it. Returns the slots stepped and their
        logits; the sampled tokens are in `buf.tokens` (FAILED for a row whose logits hold NaN)."""
        longest = max(self.lengths[s] for s in self.live)
        if self._version != self.stack.version or longest + 1 > self.buf.cols:
            self.relayout(self.per_model, longest + 1)
        models = self.models_in_use()
        window = longest + 1
        if self.graphed:  # a power of two (within the capacity): one graph serves many steps
            window = min(self.buf.cols, max(_WINDOW, 1 << longest.bit_length()))
        key = (models.start, models.stop, self.per_model, window)
        rows = spans = None  # eagerly only the occupied slots sample and attend (a captured graph: all)
        first = models.start * self.per_model
        live = [s - first for s in self.live]
        if not self.graphed and len(live) < (models.stop - models.start) * self.per_model:
            rows = torch.tensor(live, device=self.stack.device)
            spans = _spans(live)
        logits = self.graphs.run(key, lambda: self._compute(models, window, rows, spans))
        for s in self.live:
            self.lengths[s] += 1
        return slice(models.start * self.per_model, models.stop * self.per_model), logits

    def _compute(
        self, models: slice, window: int, rows: torch.Tensor | None = None, spans: list[tuple[int, int]] | None = None
    ) -> torch.Tensor:
        """The step on the fixed buffers, device operations only (what a CUDA graph captures). `rows`:
        the slots that sample; `spans`: the runs of slots that attend (reading the cache is most of a
        step's time on CPU, and a free slot's output is never read)."""
        st, buf, per = self.stack, self.buf, self.per_model
        slots = slice(models.start * per, models.stop * per)
        n = (models.stop - models.start) * per
        kv, positions = buf.kv[:, :, slots], buf.positions[slots]
        visible = torch.arange(window, device=positions.device)[None, :] <= positions[:, None]
        bias = attention_bias(visible[:, None, None, :], st.heads, st.kv_heads, st.dtype)
        column = positions.view(n, 1, 1, 1).expand(n, st.kv_heads, 1, st.head_dim)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kv[i, 0].scatter_(2, column, k)
            kv[i, 1].scatter_(2, column, v)
            keys, values = kv[i, 0, :, :, :window], kv[i, 1, :, :, :window]
            if spans is None:
                return attention(q, keys, values, bias, st.scale)
            out = torch.zeros_like(q)
            for a, b in spans:
                out[a:b] = attention(q[a:b], keys[a:b], values[a:b], bias[a:b], st.scale)
            return out

        shape = (models.stop - models.start, per)
        h = st.run(buf.tokens[slots].view(shape), positions.view(shape), attend, per, models)
        logits = st.logits(h, models).view(n, -1)
        settings = [t[slots] for t in (buf.greedy, buf.temperature, buf.top_p, buf.keys, buf.counters)]
        if rows is None:
            buf.tokens[slots] = sample(logits, *settings, graphed=self.graphed)
        else:
            buf.tokens[slots].index_copy_(0, rows, sample(logits[rows], *(t[rows] for t in settings)))
        positions += buf.occupied[slots]
        buf.counters[slots] += 1
        return logits


def _spans(slots: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive slots, as [start, stop) pairs: [0, 1, 2, 5, 6] -> [(0, 3), (5, 7)]."""
    spans: list[tuple[int, int]] = []
    for s in slots:
        if spans and spans[-1][1] == s:
            spans[-1] = (spans[-1][0], s + 1)
        else:
            spans.append((s, s + 1))
    return spans
