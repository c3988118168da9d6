"""Fusion: the modality streams a task reads become one shared representation.

Every fusion prepends one learned global token, so a sample with a single modality (or a
missing one) always has something to attend to, and returns fused tokens plus a pooled vector.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from mmtl.config import ModelConfig
from mmtl.models.encoders import Stream
from mmtl.models.layers import MLP, DecoderBlock, EncoderBlock, key_mask
from mmtl.registry import FUSIONS
from mmtl.text import PAD


@dataclass
class Fused:
    """Shared representation: ``tokens`` (B, S, W), ``valid`` (B, S) bool, ``pooled`` (B, W).

    ``ids`` (B, S): the vocabulary id behind each fused token that came from a text stream (PAD
    for every other token), or None when no text was fused: what a copying decoder copies.
    ``document`` (B, L): each row's text ids once, when ``ids`` holds them more than once (the fused
    tokens followed by the encoders' own, see :func:`with_inputs`); None: ``ids`` holds them once.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    pooled: torch.Tensor
    ids: torch.Tensor | None = None
    document: torch.Tensor | None = None

    @property
    def document_ids(self) -> torch.Tensor | None:
        """Each row's text ids once: the document that whole-word decoding and no-repeat n-grams read."""
        return self.ids if self.document is None else self.document

    def select(self, rows: torch.Tensor) -> "Fused":
        """The rows ``rows`` of every tensor (a task's subset of the batch)."""
        if rows.numel() == self.tokens.shape[0]:
            return self
        ids = None if self.ids is None else self.ids[rows]
        document = None if self.document is None else self.document[rows]
        return Fused(self.tokens[rows], self.valid[rows], self.pooled[rows], ids, document)


def masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens of each row."""
    weights = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def stream_ids(streams: list[Stream], leading: int = 0) -> torch.Tensor | None:
    """Token ids of ``streams`` concatenated (PAD for streams without ids), after ``leading`` PAD
    columns for tokens that come first (a global token); None when no stream carries ids."""
    if all(s.ids is None for s in streams):
        return None
    first = streams[0].tokens
    parts = [torch.full((first.shape[0], leading), PAD, dtype=torch.long, device=first.device)]
    parts += [s.ids if s.ids is not None else torch.full(s.valid.shape, PAD, dtype=torch.long, device=first.device)
              for s in streams]
    return torch.cat(parts, dim=1)


def with_inputs(outputs: dict[str | None, Fused], streams: list[Stream], norm: nn.Module) -> dict[str | None, Fused]:
    """Each of ``outputs`` (one per task under soft sharing) followed by the streams they were fused from
    (their tokens through ``norm``, computed once for all), so that heads read the encoders' tokens
    directly as well as through the fusion trunk."""
    tokens = norm(torch.cat([s.tokens for s in streams], dim=1))
    valid = torch.cat([s.valid for s in streams], dim=1)
    ids = stream_ids(streams)
    return {name: Fused(torch.cat([fused.tokens, tokens.to(fused.tokens.dtype)], dim=1),
                        torch.cat([fused.valid, valid], dim=1), fused.pooled,
                        None if fused.ids is None else torch.cat([fused.ids, ids], dim=1),
                        None if fused.ids is None else ids)
            for name, fused in outputs.items()}


def _concat(global_token: torch.Tensor, streams: list[Stream],
            like: Stream | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``global_token`` followed by every stream's tokens; batch size and dtype from ``like`` or the first stream."""
    like = like or streams[0]
    batch = like.tokens.shape[0]
    first = global_token.expand(batch, 1, -1).to(like.tokens.dtype)
    tokens = torch.cat([first] + [s.tokens for s in streams], dim=1)
    always = torch.ones(batch, 1, dtype=torch.bool, device=first.device)
    valid = torch.cat([always] + [s.valid for s in streams], dim=1)
    return tokens, valid


@dataclass
class FusionState:
    """What flows between fusion layers: ``hidden`` is what the layers update (and what soft
    sharing mixes between task trunks); the other fields are fixed for the whole pass."""

    hidden: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor | None = None
    context: torch.Tensor | None = None
    context_valid: torch.Tensor | None = None
    ids: torch.Tensor | None = None  # vocabulary ids of the tokens ``end`` returns (see Fused.ids)


class LayeredFusion(nn.Module, abc.ABC):
    """A fusion as ``begin`` -> ``run_layer`` on each of ``layers()`` -> ``end``.

    Parameter sharing (mmtl.models.sharing) drives fusions through these three steps: soft
    sharing mixes task trunks between layers, hybrid sharing adapts the layers per task.
    """

    # whether the fused tokens already hold every input stream's tokens unchanged (model.fusion.keep_inputs
    # then appends nothing)
    tokens_include_inputs = False

    @abc.abstractmethod
    def layers(self) -> list[nn.Module]:
        """The layers that ``run_layer`` runs, in order."""

    @abc.abstractmethod
    def begin(self, streams: list[Stream]) -> FusionState:
        """Initial state from the modality streams."""

    @abc.abstractmethod
    def run_layer(self, layer: nn.Module, state: FusionState) -> torch.Tensor:
        """New ``hidden`` after ``layer``."""

    @abc.abstractmethod
    def end(self, state: FusionState) -> Fused:
        """Fused tokens and pooled vector from the final state."""

    def forward(self, streams: list[Stream]) -> Fused:
        state = self.begin(streams)
        for layer in self.layers():
            state.hidden = self.run_layer(layer, state)
        return self.end(state)


@FUSIONS.register("single_stream")
class SingleStreamFusion(LayeredFusion):
    """Concatenate all streams and run a transformer encoder over them (ViLT/UNITER style)."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.global_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "SingleStreamFusion":
        return cls(config.width, config.fusion.depth, config.num_heads, config.mlp_ratio, config.dropout)

    def layers(self) -> list[nn.Module]:
        return list(self.blocks)

    def begin(self, streams: list[Stream]) -> FusionState:
        tokens, valid = _concat(self.global_token, streams)
        return FusionState(tokens, valid, key_mask(valid), ids=stream_ids(streams, leading=1))

    def run_layer(self, layer: nn.Module, state: FusionState) -> torch.Tensor:
        return layer(state.hidden, state.mask)

    def end(self, state: FusionState) -> Fused:
        tokens = self.norm(state.hidden)
        return Fused(tokens, state.valid, masked_mean(tokens, state.valid), state.ids)


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(LayeredFusion):
    """Text tokens attend to image tokens, layer by layer (Flamingo / BLIP style).

    The query side is a learned global token plus the streams of ``QUERY_MODALITIES``; every
    other stream is context, behind a learned null token (so a row without an image, or a task
    without text, still attends to something). Fused tokens: the updated queries followed by the
    normalised context tokens, so image-only tasks still read the image tokens.
    """

    QUERY_MODALITIES = ("text",)

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.global_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(
            DecoderBlock(width, num_heads, mlp_ratio, dropout, causal=False) for _ in range(depth)
        )
        self.norm, self.context_norm = nn.LayerNorm(width), nn.LayerNorm(width)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "CrossAttentionFusion":
        return cls(config.width, config.fusion.depth, config.num_heads, config.mlp_ratio, config.dropout)

    def layers(self) -> list[nn.Module]:
        return list(self.blocks)

    def begin(self, streams: list[Stream]) -> FusionState:
        queries = [s for s in streams if s.modality in self.QUERY_MODALITIES]
        context = [s for s in streams if s.modality not in self.QUERY_MODALITIES]
        hidden, valid = _concat(self.global_token, queries, like=streams[0])
        context_tokens, context_valid = _concat(self.null_token, context, like=streams[0])
        ordered = queries + context  # the order of the tokens ``end`` returns
        ids = stream_ids(ordered, leading=1) if ordered else None
        return FusionState(hidden, valid, key_mask(valid), context_tokens, context_valid, ids)

    def run_layer(self, layer: nn.Module, state: FusionState) -> torch.Tensor:
        return layer(state.hidden, state.context, key_mask(state.context_valid), state.mask)

    def end(self, state: FusionState) -> Fused:
        tokens = torch.cat([self.norm(state.hidden), self.context_norm(state.context[:, 1:])], dim=1)
        valid = torch.cat([state.valid, state.context_valid[:, 1:]], dim=1)
        return Fused(tokens, valid, masked_mean(tokens, valid), state.ids)


@FUSIONS.register("late")
class LateFusion(LayeredFusion):
    """Cheap baseline without cross-modal attention: pooled = MLP(sum of per-stream means + a learned
    bias); the fused tokens are the pooled vector followed by the streams' own tokens."""

    tokens_include_inputs = True

    def __init__(self, width: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.global_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.mlp = MLP(width, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "LateFusion":
        return cls(config.width, config.mlp_ratio, config.dropout)

    def layers(self) -> list[nn.Module]:
        return [self.mlp]

    def begin(self, streams: list[Stream]) -> FusionState:
        pooled = sum(masked_mean(s.tokens, s.valid) for s in streams) + self.global_token[:, 0]
        tokens = torch.cat([s.tokens for s in streams], dim=1)
        valid = torch.cat([s.valid for s in streams], dim=1)
        # hidden is the pooled vector; the stream tokens ride along in ``context``
        return FusionState(pooled, valid, context=tokens, ids=stream_ids(streams, leading=1))

    def run_layer(self, layer: nn.Module, state: FusionState) -> torch.Tensor:
        return state.hidden + layer(state.hidden)

    def end(self, state: FusionState) -> Fused:
        pooled = self.norm(state.hidden)
        # the pooled vector leads the tokens: heads that read tokens read it too, and every row
        # keeps one valid token when a modality is missing
        tokens = torch.cat([pooled[:, None], self.norm(state.context)], dim=1)
        always = torch.ones_like(state.valid[:, :1])
        return Fused(tokens, torch.cat([always, state.valid], dim=1), pooled, state.ids)
