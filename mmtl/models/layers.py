"""Transformer building blocks on ``F.scaled_dot_product_attention`` (pre-norm)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtl.errors import MMTLError


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, cross-attention otherwise."""

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, W) -> (B, heads, T, W / heads)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values of ``context``, each (B, heads, S, W / heads)."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Queries from ``x`` attend to given keys/values."""
        y = F.scaled_dot_product_attention(
            self.split_heads(self.q(x)), k, v, attn_mask=mask, is_causal=causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(x.shape))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, causal: bool = False,
    ) -> torch.Tensor:
        """``mask``: bool (B, 1, 1, S) or broadcastable, True where a key may be attended."""
        k, v = self.keys_values(x if context is None else context)
        return self.attend(x, k, v, mask, causal)


class MLP(nn.Sequential):
    """Two-layer GELU feed-forward."""

    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))


class Block(nn.Module):
    """A transformer block; with ``checkpointing`` set, its activations are recomputed in the backward pass."""

    checkpointing = False

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.compute, *args, use_reentrant=False, **kwargs)
        return self.compute(*args, **kwargs)

    def compute(self, *args, **kwargs) -> torch.Tensor:
        """The block's function (subclasses define it)."""
        raise NotImplementedError


def units_of(module: nn.Module) -> list[nn.Module]:
    """The blocks of ``module`` that are compiled, activation-checkpointed and sharded one by one: those it
    declares with a ``units()`` method of its own (``MultiTaskModel.units``), else :func:`find_units`'s."""
    declared = getattr(module, "units", None)
    return declared() if callable(declared) else find_units(module)


def find_units(module: nn.Module) -> list[nn.Module]:
    """The blocks of ``module`` that are compiled, activation-checkpointed and sharded one by one: every
    :class:`Block`, and what a third-party encoder inside declares with a ``units()`` method of its own
    (timm stages, open_clip residual blocks). An MMTLError when there is none."""
    found: dict[int, nn.Module] = {}
    for part in module.modules():
        if isinstance(part, Block):
            found[id(part)] = part
        elif part is not module and callable(getattr(part, "units", None)):
            found.update((id(unit), unit) for unit in part.units())
    if not found:
        raise MMTLError(f"{type(module).__name__} has no blocks to compile, checkpoint or shard (no mmtl Block and "
                        "no encoder that declares its units)")
    return list(found.values())


class EncoderBlock(Block):
    """Pre-norm self-attention + MLP that starts as the identity.

    The output projections of both residual branches start at zero (skip-init, as in ReZero /
    Fixup): an untrained block passes its input through instead of mixing every token with random
    attention. With two such fusion blocks between the image encoder and the caption decoder, the
    default init blurred the tokens' positions and single-task captioning on shapes world reached
    BLEU-4 65.8 after 560 steps against 77.5 with skip-init and 78.5 for a plain reference
    (docs/benchmarks.md, "Models that learn", session 5).
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, num_heads, dropout)
        self.mlp = MLP(width, mlp_ratio, dropout)
        for projection in (self.attn.out, self.mlp[2]):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)

    def compute(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(Block):
    """Pre-norm self-attention, cross-attention to a memory, MLP.

    ``causal=True`` (a text decoder): each position sees only earlier ones. ``causal=False``: the
    queries see each other freely (cross-attention fusion, where text attends to image tokens).
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = Attention(width, num_heads, dropout)
        self.cross_attn = Attention(width, num_heads, dropout)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def compute(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` restricts which of the queries ``x`` each query may see (on top of causality)."""
        x = x + self.self_attn(self.norm1(x), mask=mask, causal=self.causal)
        x = x + self.cross_attn(self.norm2(x), context=memory, mask=memory_mask)
        return x + self.mlp(self.norm3(x))

    def step(self, x: torch.Tensor, cache: "DecoderCache", memory_mask: torch.Tensor | None) -> torch.Tensor:
        """One new position ``x`` (B, 1, W): self-attends to the cached positions, which it extends."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        cache.self_k = k if cache.self_k is None else torch.cat([cache.self_k, k], dim=2)
        cache.self_v = v if cache.self_v is None else torch.cat([cache.self_v, v], dim=2)
        x = x + self.self_attn.attend(h, cache.self_k, cache.self_v)
        x = x + self.cross_attn.attend(self.norm2(x), cache.cross_k, cache.cross_v, memory_mask)
        return x + self.mlp(self.norm3(x))


class DecoderCache:
    """Keys/values of one decoder block: the growing self-attention ones and the fixed cross-attention ones."""

    def __init__(self, block: DecoderBlock, memory: torch.Tensor) -> None:
        self.self_k: torch.Tensor | None = None
        self.self_v: torch.Tensor | None = None
        self.cross_k, self.cross_v = block.cross_attn.keys_values(memory)
        self.copy_source: Any = None  # a copying decoder's CopySource (mmtl.models.heads), on its first cache

    @property
    def length(self) -> int:
        """Number of positions already cached."""
        return 0 if self.self_k is None else self.self_k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the self-attention cache (beam search moves hypotheses between rows).

        The memory keys/values are not reordered: beam search only moves rows within one
        sample's beams, which share the same memory.
        """
        if self.self_k is not None:
            self.self_k = self.self_k.index_select(0, index)
            self.self_v = self.self_v.index_select(0, index)


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) bool validity -> (B, 1, 1, S) attention mask for SDPA."""
    return valid[:, None, None, :]
