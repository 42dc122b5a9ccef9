"""One forward pass per decode step for every Llama-architecture checkpoint on a device.

Switch generation runs several checkpoints of one model (P, F, A, often the switcher): same
architecture, same shapes, different weights. Stepped one after another, each costs a full
forward pass whose time on small models is almost all per-operation overhead, whatever the rows.
Here their weights are stacked ([models, out, in]) and a step is one pass over every running
row of every checkpoint: each linear layer is one batched matmul (`bmm`), attention one call
over a shared, preallocated KV cache (rows of all checkpoints, left-aligned by padding), so a
step costs about what one checkpoint's step did. The models' own parameters become views into
the stacked tensors, so nothing is held twice.

Only plain Llama checkpoints qualify (`signature`); anything else, and any model with a LoRA
adapter attached, keeps the transformers forward in batching.py. Prefill runs here too, one
request at a time, so a request's cache is in this layout from its first token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

_MIN_COLUMNS = 64  # the shared cache's capacity grows in doublings from this


def signature(model: torch.nn.Module) -> tuple | None:
    """What must match for checkpoints to share a fused step; None when this one cannot join."""
    if type(model).__name__ != "LlamaForCausalLM" or hasattr(model, "peft_config"):
        return None
    c = model.config
    if (
        getattr(c, "attention_bias", False)
        or getattr(c, "mlp_bias", False)
        or c.hidden_act != "silu"
        or getattr(c, "pretraining_tp", 1) != 1
        or getattr(c, "_attn_implementation", "sdpa") not in ("sdpa", "eager")
    ):
        return None
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    p = model.lm_head.weight
    rope = json.dumps(getattr(c, "rope_parameters", None), sort_keys=True, default=str)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return (
        c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
        c.num_key_value_heads, head_dim, c.vocab_size, float(c.rms_norm_eps), rope, tied, str(p.device), p.dtype,
    )


@dataclass
class _Layer:
    ln1: torch.Tensor  # [M, 1, d]
    qkv: torch.Tensor  # [M, q + 2 kv, d]
    o: torch.Tensor  # [M, d, q]
    ln2: torch.Tensor  # [M, 1, d]
    gate_up: torch.Tensor  # [M, 2 i, d]
    down: torch.Tensor  # [M, d, i]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class StackedModels:
    """The weights of same-shaped Llama checkpoints stacked along a new first dimension."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        self.models = list(models)
        first = models[0]
        c = first.config
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = float(c.rms_norm_eps)
        self.vocab, self.hidden, self.inter = c.vocab_size, c.hidden_size, c.intermediate_size
        self.scale = self.head_dim**-0.5
        self.rotary = first.model.rotary_emb
        self.device = first.lm_head.weight.device
        self.dtype = first.lm_head.weight.dtype
        self._stack()

    def _stack(self) -> None:
        """Copy the weights into stacked tensors, then point every model's parameters at their slice."""
        ms = self.models
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        with torch.no_grad():
            self.embed = torch.stack([m.model.embed_tokens.weight.detach() for m in ms])
            tied = all(m.lm_head.weight is m.model.embed_tokens.weight for m in ms)
            self.head = self.embed if tied else torch.stack([m.lm_head.weight.detach() for m in ms])
            self.norm = torch.stack([m.model.norm.weight.detach() for m in ms]).unsqueeze(1)
            self.layers: list[_Layer] = []
            for i in range(len(ms[0].model.layers)):
                ls = [m.model.layers[i] for m in ms]
                self.layers.append(_Layer(
                    ln1=torch.stack([x.input_layernorm.weight.detach() for x in ls]).unsqueeze(1),
                    qkv=torch.stack([torch.cat([
                        x.self_attn.q_proj.weight, x.self_attn.k_proj.weight, x.self_attn.v_proj.weight
                    ]).detach() for x in ls]),
                    o=torch.stack([x.self_attn.o_proj.weight.detach() for x in ls]),
                    ln2=torch.stack([x.post_attention_layernorm.weight.detach() for x in ls]).unsqueeze(1),
                    gate_up=torch.stack([torch.cat([x.mlp.gate_proj.weight, x.mlp.up_proj.weight]).detach() for x in ls]),
                    down=torch.stack([x.mlp.down_proj.weight.detach() for x in ls]),
                ))
            for j, m in enumerate(ms):  # share storage: the models' forward still works, on the same numbers
                m.model.embed_tokens.weight.data = self.embed[j]
                if not tied:
                    m.lm_head.weight.data = self.head[j]
                m.model.norm.weight.data = self.norm[j, 0]
                for layer, x in zip(self.layers, m.model.layers, strict=True):
                    x.input_layernorm.weight.data = layer.ln1[j, 0]
                    x.self_attn.q_proj.weight.data = layer.qkv[j, :q]
                    x.self_attn.k_proj.weight.data = layer.qkv[j, q : q + kv]
                    x.self_attn.v_proj.weight.data = layer.qkv[j, q + kv :]
                    x.self_attn.o_proj.weight.data = layer.o[j]
                    x.post_attention_layernorm.weight.data = layer.ln2[j, 0]
                    x.mlp.gate_proj.weight.data = layer.gate_up[j, : self.inter]
                    x.mlp.up_proj.weight.data = layer.gate_up[j, self.inter :]
                    x.mlp.down_proj.weight.data = layer.down[j]

    def add(self, model: torch.nn.Module) -> int:
        """Stack one more model (its index); callers relayout any running rows."""
        self.models.append(model)
        self._stack()
        return len(self.models) - 1

    # -- the forward pass -----------------------------------------------------------------

    def run(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attend,
        rows: int,
        models: slice | None = None,
    ) -> torch.Tensor:
        """Hidden states after the last layer for `tokens` [M, rows * L] of every model (or `models`).

        `attend(layer, q, k, v)` stores k, v wherever the caller keeps them and returns attention
        output [M * rows, heads, L, head_dim]; q, k, v come as [M * rows, heads, L, head_dim].
        """
        sel = models if models is not None else slice(None)
        n_models, width = tokens.shape
        steps = width // rows
        v = self.vocab
        offsets = torch.arange(n_models, device=tokens.device).unsqueeze(1) * v
        if models is not None:
            offsets = offsets + sel.start * v
        h = F.embedding(tokens + offsets, self.embed.view(-1, self.hidden))  # [M, rows * L, d]
        cos, sin = self.rotary(h, positions.view(n_models * rows, steps))  # [M * rows, L, hd]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, layer in enumerate(self.layers):
            x = _rms(h, layer.ln1[sel], self.eps)
            qkv = torch.bmm(x, layer.qkv[sel].mT).view(n_models * rows, steps, -1)
            q = qkv[..., :q_size].view(n_models * rows, steps, self.heads, self.head_dim).transpose(1, 2)
            k = qkv[..., q_size : q_size + kv_size].view(n_models * rows, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            val = qkv[..., q_size + kv_size :].view(n_models * rows, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            out = attend(i, _rotate(q, cos, sin), _rotate(k, cos, sin), val)
            out = out.transpose(1, 2).reshape(n_models, rows * steps, q_size)
            h = h + torch.bmm(out, layer.o[sel].mT)
            x = _rms(h, layer.ln2[sel], self.eps)
            gate, up = torch.bmm(x, layer.gate_up[sel].mT).split(self.inter, dim=-1)
            h = h + torch.bmm(F.silu(gate) * up, layer.down[sel].mT)
        return h

    def logits(self, h: torch.Tensor, models: slice | None = None) -> torch.Tensor:
        """[M, rows, vocab] from final hidden states [M, rows, d]."""
        sel = models if models is not None else slice(None)
        return torch.bmm(_rms(h, self.norm[sel], self.eps), self.head[sel].mT)

    @torch.inference_mode()
    def prefill(self, index: int, cache: DynamicCache, new: list[int], start: int) -> tuple[DynamicCache, torch.Tensor]:
        """Model `index` reads `new` after the `start` tokens `cache` holds: the grown cache and the last logits."""
        tokens = torch.tensor([new], device=self.device)
        n = len(new)
        positions = torch.arange(start, start + n, device=self.device).unsqueeze(0)
        old = [(layer.keys, layer.values) for layer in cache.layers] if start else []
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        mask = None
        if n > 1:  # causal over the new tokens, everything cached is visible
            mask = torch.ones(n, start + n, dtype=torch.bool, device=self.device).tril(diagonal=start)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if old:
                k = torch.cat([old[i][0], k], dim=2)
                v = torch.cat([old[i][1], v], dim=2)
            kept.append((k, v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)

        h = self.run(tokens, positions, attend, 1, slice(index, index + 1))
        logits = self.logits(h[:, -1:], slice(index, index + 1))
        out = DynamicCache()
        for i, (k, v) in enumerate(kept):
            out.update(k, v, i)
        return out, logits[0, 0]


class FusedBatch:
    """Running rows of every stacked model in one KV cache, stepped by one forward pass.

    Slot s = model * per_model + j. Every row's cache ends at column `end` (shorter ones start
    later: left padding, masked out); a step writes column `end` for all slots at once. Free
    slots run along on a dummy token and see only themselves.
    """

    def __init__(self, stack: StackedModels) -> None:
        self.stack = stack
        self.per_model = 0
        self.rows: list = []  # slot -> request or None
        self.starts: list[int] = []
        self.end = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros(0, 0, dtype=torch.bool, device=stack.device)
        self.occupied = torch.zeros(0, dtype=torch.bool, device=stack.device)  # per slot

    @property
    def live(self) -> list[int]:
        return [s for s, r in enumerate(self.rows) if r is not None]

    def _relayout(self, per_model: int, need: int) -> None:
        """Rebuild the cache for `per_model` slots per model and at least `need` columns before `end`."""
        st = self.stack
        old_rows, old_starts, old_end, old_per = self.rows, self.starts, self.end, max(1, self.per_model)
        lengths = [old_end - old_starts[s] for s in range(len(old_rows)) if old_rows[s] is not None]
        end = max([need, *lengths, 0])
        cols = _MIN_COLUMNS
        while cols < end + 16:
            cols *= 2
        slots = len(st.models) * per_model
        shape = (slots, st.kv_heads, cols, st.head_dim)
        keys = [torch.zeros(shape, dtype=st.dtype, device=st.device) for _ in st.layers]
        values = [torch.zeros(shape, dtype=st.dtype, device=st.device) for _ in st.layers]
        mask = torch.zeros(slots, cols, dtype=torch.bool, device=st.device)
        rows: list = [None] * slots
        starts = [end] * slots
        packed = [0] * len(st.models)  # shrinking packs each model's rows to the front; growing keeps slots
        for s, req in enumerate(old_rows):
            if req is None:
                continue
            model, j = divmod(s, old_per)
            if per_model < old_per:
                j, packed[model] = packed[model], packed[model] + 1
            t = model * per_model + j
            n = old_end - old_starts[s]
            for new, old in ((keys, self.keys), (values, self.values)):
                for layer in range(len(st.layers)):
                    new[layer][t, :, end - n : end] = old[layer][s, :, old_starts[s] : old_end]
            mask[t, end - n : end] = True
            rows[t], starts[t] = req, end - n
        self.keys, self.values, self.mask = keys, values, mask
        self.occupied = torch.tensor([r is not None for r in rows], dtype=torch.bool, device=st.device)
        self.rows, self.starts, self.end, self.per_model = rows, starts, end, per_model

    def compact(self) -> None:
        """Give back slots when every model runs at most half of its own: free slots still cost compute.

        Moves rows to other slots: call it before reading slot numbers for a step.
        """
        busiest = max(self.used(m) for m in range(len(self.stack.models)))
        if self.per_model > 1 and busiest <= self.per_model // 2:
            self._relayout(max(busiest, 1), 0)

    def used(self, model: int) -> int:
        return sum(r is not None for r in self.rows[model * self.per_model : (model + 1) * self.per_model])

    def _free(self, model: int) -> list[int]:
        return [s for s in range(model * self.per_model, (model + 1) * self.per_model) if self.rows[s] is None]

    def add(self, model: int, req, cache: DynamicCache, length: int) -> None:
        """Put `req` (its cache holds `length` tokens) into a free slot of `model`."""
        free = self._free(model)
        if not free or length > self.end or self.end + 1 >= self.mask.shape[1]:
            self._relayout(self.per_model if free else self.per_model + 1, length)
            free = self._free(model)
        s = free[0]
        start = self.end - length
        for layer, entry in enumerate(cache.layers):
            self.keys[layer][s, :, start : self.end] = entry.keys[0]
            self.values[layer][s, :, start : self.end] = entry.values[0]
        self.mask[s] = False
        self.mask[s, start : self.end] = True
        self.occupied[s] = True
        self.rows[s], self.starts[s] = req, start

    def remove(self, slot: int) -> DynamicCache:
        """Free `slot`; its row's cache, unpadded, for the prefix-cache pool."""
        start = self.starts[slot]
        cache = DynamicCache()
        for layer in range(len(self.keys)):
            cache.update(
                self.keys[layer][slot : slot + 1, :, start : self.end].clone(),
                self.values[layer][slot : slot + 1, :, start : self.end].clone(),
                layer,
            )
        self.rows[slot] = None
        self.mask[slot] = False
        self.occupied[slot] = False
        return cache

    @torch.inference_mode()
    def step(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Feed one token per slot (at its position); logits [slots, vocab]."""
        st = self.stack
        if self.end + 1 > self.mask.shape[1]:
            self._relayout(self.per_model, 0)  # keeps every row's slot
        col = self.end
        self.mask[:, col] = True
        mask = self.mask[:, None, None, : col + 1]
        n_models = len(st.models)
        tok = torch.tensor(tokens, device=st.device).view(n_models, self.per_model)
        pos = torch.tensor(positions, device=st.device).view(n_models, self.per_model)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.keys[i][:, :, col] = k[:, :, 0]
            self.values[i][:, :, col] = v[:, :, 0]
            return F.scaled_dot_product_attention(
                q, self.keys[i][:, :, : col + 1], self.values[i][:, :, : col + 1],
                attn_mask=mask, scale=st.scale, enable_gqa=True,
            )

        h = st.run(tok, pos, attend, self.per_model)
        self.end = col + 1
        self.mask[:, col] = self.occupied  # free slots saw only the column just written; now not even that
        return st.logits(h).view(n_models * self.per_model, -1)
