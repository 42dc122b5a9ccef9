"""Our own forward pass for Llama-architecture checkpoints: stacked weights, the shared forward, batched prefill
(the fixed-buffer decode step that runs it is fused_batch.py).

Switch generation runs several checkpoints of one model (P, F, A, often the switcher): same
architecture, same shapes, different weights. On CPU, stepped one after another, each costs a full
forward pass whose time on small models is almost all per-operation overhead, whatever the rows.
Here their weights are stacked ([models, out, in]) and a pass over rows of every checkpoint is one
batched matmul (`bmm`) per linear layer, so a step costs about what one checkpoint's step did. The
models' own parameters become views into the stacked tensors, so nothing is held twice.

On CUDA the decode step is captured as a graph instead (fused_batch.py, graphs.py), which removes
the per-operation overhead that stacking amortises; stacking would then only add cost: a step reads
every stacked model's weights even when only one of them has rows (one query: 3-4x the bytes of the
model that writes). So on CUDA each checkpoint is a stack of one (`stack_key`).

Only plain Llama checkpoints qualify (`signature`); anything else, and any model with a LoRA
adapter attached, keeps the transformers forward (hf_batch.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Prefill passes are cut to at most this many (padded) token positions: bounds the activations.
MAX_PREFILL_POSITIONS = 8192


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


def stack_key(model: torch.nn.Module) -> tuple | None:
    """The stack `model` joins: same-shaped checkpoints share one on CPU; on CUDA each has its own (see above)."""
    key = signature(model)
    if key is None or model.lm_head.weight.device.type != "cuda":
        return key
    return (*key, id(model))


@dataclass
class _Layer:
    ln1: torch.Tensor  # [M, 1, d]
    qkv: torch.Tensor  # [M, q + 2 kv, d]
    o: torch.Tensor  # [M, d, q]
    ln2: torch.Tensor  # [M, 1, d]
    gate_up: torch.Tensor  # [M, 2 i, d]
    down: torch.Tensor  # [M, d, i]


@dataclass
class PrefillRow:
    """One row of a batched prefill: stacked model `model` reads `new` after the `cached` keys and values."""

    model: int
    cached: torch.Tensor | None  # [layers, 2, kv_heads, tokens, head_dim]
    new: list[int]

    @property
    def start(self) -> int:
        return 0 if self.cached is None else self.cached.shape[3]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def attention_bias(mask: torch.Tensor, heads: int, kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive bias `attention` takes, from a boolean mask [rows, 1, L, keys] (True: visible):
    built once per pass, not once per layer, and laid out for the folded query heads."""
    rows, _, length, keys = mask.shape
    group = heads // kv_heads
    if group > 1 and length > 1:
        mask = mask[:, :, None].expand(rows, 1, group, length, keys).reshape(rows, 1, group * length, keys)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """Grouped-query attention without repeating keys: the query heads sharing a key head are folded
    into its query length. q [rows, heads, L, hd], k and v [rows, kv_heads, keys, hd], `bias` from
    `attention_bias`."""
    rows, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]
    if heads > kv_heads:
        q = q.reshape(rows, kv_heads, heads // kv_heads * length, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out.reshape(rows, heads, length, head_dim)


def prefill_mask(starts: list[int], length: int, device: torch.device) -> torch.Tensor:
    """[rows, 1, length, cached + length] for rows whose cached tokens are left-padded to max(starts)
    columns and whose new tokens follow, right-padded to `length`: each sees its own cached tokens
    and its new tokens up to itself (a padding position sees at least itself)."""
    c = max(starts)
    cols = torch.arange(c + length, device=device)
    query = torch.arange(length, device=device)
    start = torch.tensor(starts, device=device)
    seen = (cols[None, :] >= c - start[:, None]) & (cols[None, :] < c)
    causal = (cols[None, :] >= c) & (cols[None, :] - c <= query[:, None])
    return (seen[:, None, :] | causal[None]).unsqueeze(1)


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
        self.version = 0  # bumped whenever the weights are restacked (captured graphs read the old ones)
        self._stack()

    def _stack(self) -> None:
        """Copy the weights into stacked tensors, then point every model's parameters at their slice."""
        ms = self.models
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
            for j, m in enumerate(ms):
                self._share(j, m, tied)
        self.version += 1

    def _share(self, j: int, m: torch.nn.Module, tied: bool) -> None:
        """Point model `j`'s parameters at its slice of the stack: its own forward still works, on the same numbers."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
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

    def run(self, tokens: torch.Tensor, positions: torch.Tensor, attend, rows: int, models: slice) -> torch.Tensor:
        """Hidden states after the last layer for `tokens` [M, rows * L] of the stacked models `models`.

        `attend(layer, q, k, v)` stores k, v wherever the caller keeps them and returns attention
        output [M * rows, heads, L, head_dim]; q, k, v come as [M * rows, heads, L, head_dim].
        Only device operations: a CUDA graph can capture it.
        """
        n_models, width = tokens.shape
        steps = width // rows
        offsets = (torch.arange(n_models, device=tokens.device).unsqueeze(1) + models.start) * self.vocab
        h = F.embedding(tokens + offsets, self.embed.view(-1, self.hidden))  # [M, rows * L, d]
        cos, sin = self.rotary(h, positions.reshape(n_models * rows, steps))  # [M * rows, L, hd]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, layer in enumerate(self.layers):
            x = _rms(h, layer.ln1[models], self.eps)
            qkv = torch.bmm(x, layer.qkv[models].mT).view(n_models * rows, steps, -1)
            q = qkv[..., :q_size].view(n_models * rows, steps, self.heads, self.head_dim).transpose(1, 2)
            k = qkv[..., q_size : q_size + kv_size].view(n_models * rows, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            val = qkv[..., q_size + kv_size :].view(n_models * rows, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            out = attend(i, _rotate(q, cos, sin), _rotate(k, cos, sin), val)
            out = out.transpose(1, 2).reshape(n_models, rows * steps, q_size)
            h = h + torch.bmm(out, layer.o[models].mT)
            x = _rms(h, layer.ln2[models], self.eps)
            gate, up = torch.bmm(x, layer.gate_up[models].mT).split(self.inter, dim=-1)
            h = h + torch.bmm(F.silu(gate) * up, layer.down[models].mT)
        return h

    def logits(self, h: torch.Tensor, models: slice) -> torch.Tensor:
        """[M, rows, vocab] from final hidden states [M, rows, d]."""
        return torch.bmm(_rms(h, self.norm[models], self.eps), self.head[models].mT)

    @torch.inference_mode()
    def prefill_rows(self, rows: list[PrefillRow]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every row's new tokens read after its cached ones, in one pass: each row's grown keys and values
        ([layers, 2, kv_heads, tokens, head_dim], views into one tensor) and its last logits [rows, vocab]."""
        lo = min(r.model for r in rows)
        members: list[list[int]] = [[] for _ in range(max(r.model for r in rows) + 1 - lo)]
        for i, r in enumerate(rows):
            members[r.model - lo].append(i)
        width = max(len(m) for m in members)  # rows per model; models with fewer get empty rows
        slot = [0] * len(rows)
        for m, group in enumerate(members):
            for j, i in enumerate(group):
                slot[i] = m * width + j
        layout = _PrefillLayout(self, rows, slot, len(members) * width)
        c, kv, bias = layout.cached_width, layout.kv, layout.bias

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kv[i, 0, :, :, c:] = k
            kv[i, 1, :, :, c:] = v
            return attention(q, kv[i, 0], kv[i, 1], bias, self.scale)

        models = slice(lo, lo + len(members))
        shape = (len(members), width * layout.length)
        h = self.run(layout.tokens.view(shape), layout.positions.view(shape), attend, width, models)
        index = layout.last.view(len(members), width, 1, 1).expand(-1, -1, 1, self.hidden)
        last = h.view(len(members), width, layout.length, -1).gather(2, index).squeeze(2)  # [M, width, d]
        logits = self.logits(last, models).view(len(members) * width, -1)[torch.tensor(slot, device=self.device)]
        return [kv[:, :, s, :, c - r.start : c + len(r.new)] for s, r in zip(slot, rows, strict=True)], logits


class _PrefillLayout:
    """The tensors of a batched prefill. Slot s holds a row's cached tokens left-padded to `cached_width`
    columns, then its new tokens right-padded to `length`: each row's sequence is contiguous."""

    def __init__(self, stack: StackedModels, rows: list[PrefillRow], slot: list[int], slots: int) -> None:
        device = stack.device
        self.length = max(len(r.new) for r in rows)
        self.cached_width = c = max(r.start for r in rows)
        tokens = [[0] * self.length for _ in range(slots)]
        positions = [list(range(self.length)) for _ in range(slots)]
        starts, news = [0] * slots, [1] * slots
        for s, r in zip(slot, rows, strict=True):
            tokens[s][: len(r.new)] = r.new
            positions[s] = list(range(r.start, r.start + self.length))
            starts[s], news[s] = r.start, len(r.new)
        self.tokens = torch.tensor(tokens, device=device)
        self.positions = torch.tensor(positions, device=device)
        self.last = torch.tensor([n - 1 for n in news], device=device)  # per slot: the position of its last new token
        # Every row's keys and values, cached then new: what the pass attends over and what it returns.
        self.kv = torch.zeros(
            len(stack.layers), 2, slots, stack.kv_heads, c + self.length, stack.head_dim, dtype=stack.dtype, device=device
        )
        for s, r in zip(slot, rows, strict=True):
            if r.cached is not None and r.start:
                self.kv[:, :, s, :, c - r.start : c] = r.cached
        self.bias = attention_bias(prefill_mask(starts, self.length, device), stack.heads, stack.kv_heads, stack.dtype)
