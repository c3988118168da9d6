"""Modality encoders: each turns one input into width-sized tokens carrying a modality-type embedding."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmtl.config import ModelConfig, setting, settings_of
from mmtl.config.fields import POSITIVE, between
from mmtl.errors import ConfigError
from mmtl.models.layers import EncoderBlock, key_mask
from mmtl.registry import IMAGE_ENCODERS, TEXT_ENCODERS
from mmtl.text import BOS, EOS, FULL_BPE_SIZE, PAD, SPECIAL_TOKENS, Vocabulary


@dataclass
class Stream:
    """Tokens of one modality: ``tokens`` (B, S, W), ``valid`` (B, S) bool, and the modality's name.

    ``ids`` (B, S): the vocabulary id each token was embedded from, for text streams (None for
    other modalities); decoders with a copy mechanism copy from them.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    modality: str = ""
    ids: torch.Tensor | None = None


@dataclass
class TimmSettings:
    """``model.image`` settings of the timm encoder."""

    timm_model: str = "resnet18"
    # passed to timm.create_model as they are (architecture knobs of the chosen model)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    # CNNs: average-pool the feature map by this factor before it becomes tokens (a high-resolution
    # backbone with few tokens for the fusion)
    feature_pool: int = setting(1, range=POSITIVE)


@IMAGE_ENCODERS.register("timm")
class TimmImageEncoder(nn.Module):
    """Any timm model, read through ``forward_features`` (ViT tokens or CNN feature maps)."""

    Settings = TimmSettings

    def __init__(self, timm_model: str, timm_kwargs: dict, width: int, image_size: int,
                 pretrained_path: str | None = None, in_chans: int = 3, key: str = "model.image",
                 feature_pool: int = 1) -> None:
        super().__init__()
        import timm

        self.feature_pool = feature_pool

        overlay = None
        if pretrained_path is not None:
            overlay = {"file": str(readable_file(pretrained_path, f"{key}.pretrained_path"))}
        # in_chans only when it differs, so RGB models are created exactly as before
        channels = {} if in_chans == 3 else {"in_chans": in_chans}
        try:
            self.backbone = timm.create_model(
                timm_model, pretrained=overlay is not None, pretrained_cfg_overlay=overlay, num_classes=0,
                **timm_kwargs, **channels
            )
        except Exception as exc:  # noqa: BLE001 - timm raises many types for a file that is not weights
            if overlay is not None:
                raise ConfigError(f"{key}.pretrained_path: cannot load weights from {pretrained_path} into timm model "
                                  f"{timm_model!r} (is it a weights file of that model? {type(exc).__name__}: "
                                  f"{_first_line(exc)})") from None
            if isinstance(exc, (RuntimeError, TypeError)):
                raise ConfigError(f"{key}: cannot build timm model {timm_model!r}: {_first_line(exc)}") from None
            raise
        # per-channel statistics of RGB models; other channel counts use their mean
        mean = torch.tensor(self.backbone.pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))
        std = torch.tensor(self.backbone.pretrained_cfg.get("std", (0.5, 0.5, 0.5)))
        if in_chans != 3:
            mean, std = mean.mean().repeat(in_chans), std.mean().repeat(in_chans)
        self.register_buffer("mean", mean.view(1, in_chans, 1, 1) * 255, persistent=False)
        self.register_buffer("std", std.view(1, in_chans, 1, 1) * 255, persistent=False)
        self.proj = nn.Linear(self.backbone.num_features, width)
        self.type_embedding = nn.Parameter(torch.zeros(width))
        # CNN feature maps carry no explicit position into the fusion; give every token one
        # (probed in eval mode: a training-mode pass would move loaded BatchNorm statistics)
        self.backbone.eval()
        with torch.no_grad():
            num_tokens = self._features(torch.zeros(1, in_chans, image_size, image_size)).shape[1]
        self.backbone.train()
        self.position = nn.Parameter(torch.randn(num_tokens, width) * 0.02)

    @classmethod
    def from_config(cls, config: ModelConfig, vocab: Vocabulary) -> "TimmImageEncoder":
        image, settings = config.image, settings_of(config.image, cls, "model.image")
        return cls(settings.timm_model, settings.timm_kwargs, config.width, image.image_size, image.pretrained_path,
                   feature_pool=settings.feature_pool)

    def units(self) -> list[nn.Module]:
        """The backbone's stages as timm lists them in ``feature_info`` (ViT blocks, CNN stages), those
        with parameters: what is compiled, checkpointed and sharded one by one (``mmtl.models.layers.find_units``)."""
        stages = [self.backbone.get_submodule(info["module"]) for info in getattr(self.backbone, "feature_info", [])]
        return [stage for stage in stages if any(True for _ in stage.parameters())]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        if features.ndim == 4:  # CNN feature map (B, C, H, W) -> tokens
            if self.feature_pool > 1:
                features = F.avg_pool2d(features, self.feature_pool, ceil_mode=True)
            features = features.flatten(2).transpose(1, 2)
        return features

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> Stream:
        """``image``: (B, C, H, W) uint8 (C = 3 for RGB); normalised here, on the device."""
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        # contiguous: frozen and trainable projections then take the same matmul path (bitwise-equal outputs)
        tokens = self.proj(self._features(x).contiguous()) + self.position + self.type_embedding
        return Stream(tokens, present[:, None].expand(-1, tokens.shape[1]))


@dataclass
class TransformerSettings:
    """``model.text`` settings of the transformer encoder."""

    depth: int = setting(2, range=between(0, 1_000))


@TEXT_ENCODERS.register("transformer")
class TransformerTextEncoder(nn.Module):
    """Bidirectional transformer over vocabulary ids (open_clip BPE tokens)."""

    Settings = TransformerSettings

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, context_length: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(context_length, width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.type_embedding = nn.Parameter(torch.zeros(width))

    @classmethod
    def from_config(cls, config: ModelConfig, vocab: Vocabulary) -> "TransformerTextEncoder":
        depth = settings_of(config.text, cls, "model.text").depth
        return cls(vocab.size, config.width, depth, config.num_heads,
                   config.text.context_length, config.mlp_ratio, config.dropout)

    def forward(self, ids: torch.Tensor, present: torch.Tensor) -> Stream:
        """``ids``: (B, L) PAD-padded vocabulary ids."""
        valid = (ids != PAD) & present[:, None]
        x = self.embed(ids) + self.position[: ids.shape[1]]
        # a row with no text keeps one attendable key so attention stays finite; its tokens stay invalid
        mask = key_mask(valid | ~valid.any(1, keepdim=True))
        for block in self.blocks:
            x = block(x, mask)
        return Stream(self.norm(x) + self.type_embedding, valid, ids=ids)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def readable_file(path: str | Path, key: str) -> Path:
    """``path`` as a file this process can read; a ConfigError naming ``key`` says why not (absent, a
    directory, permission denied)."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{key}: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory; give a weights file") from None
    except PermissionError:
        raise ConfigError(f"{key}: permission denied reading {path}; check the file's permissions") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    return path


def load_state_file(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: ``.safetensors``, or a torch file loaded with ``weights_only=True``.

    A ``state_dict`` / ``model`` entry is unwrapped and a ``module.`` prefix (DDP) removed.
    """
    path = readable_file(path, key)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged or foreign files raise several types
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_tower(tower: nn.Module, path: str | Path, key: str, prefix: str = "") -> None:
    """Load ``tower`` from a local file holding either a whole open_clip model (tower keys under
    ``prefix``, or at the top level for the text tower) or the tower alone. Mismatches are named."""
    state = load_state_file(path, key)
    own = tower.state_dict()
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in state if state[k].shape != own[k].shape)
    if missing or wrong:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:5])}" if missing else "",
            ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in wrong[:5]),
        ]))
        raise ConfigError(f"{key}: {path} does not fit the configured open_clip tower: {detail}")
    tower.load_state_dict(state)


def open_clip_config(model_name: str, part: str, overrides: dict, key: str) -> tuple[int, dict]:
    """(embed_dim, ``part`` config) of open_clip model config ``model_name``, updated by ``overrides``
    (whose optional ``embed_dim`` replaces the model's: it sizes the tower's output projection)."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ConfigError(f"{key}: unknown open_clip model config {model_name!r} "
                          f"(e.g. {', '.join(open_clip.list_models()[:5])}, ...)")
    overrides = dict(overrides)
    embed_dim = overrides.pop("embed_dim", config["embed_dim"])
    return embed_dim, {**config[part], **overrides}


@dataclass
class OpenClipSettings:
    """Settings of the open_clip encoders: an open_clip model config name and overrides of its
    ``vision_cfg`` (``model.image``) or ``text_cfg`` (``model.text``)."""

    open_clip_model: str = "ViT-B-32"
    open_clip_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpenClipTextSettings(OpenClipSettings):
    """``model.text`` settings of the open_clip text encoder: also whether tokens see later tokens."""

    bidirectional: bool = False


@IMAGE_ENCODERS.register("open_clip")
class OpenClipImageEncoder(nn.Module):
    """An open_clip vision transformer tower, read as tokens (patch tokens after its final norm)."""

    Settings = OpenClipSettings

    def __init__(self, model_name: str, overrides: dict, width: int, image_size: int,
                 pretrained_path: str | None = None) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_vision_tower

        embed_dim, cfg = open_clip_config(model_name, "vision_cfg", {**overrides, "image_size": image_size},
                                          "model.image.open_clip_model")
        try:
            self.tower = _build_vision_tower(embed_dim, cfg)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model.image: cannot build open_clip vision tower {model_name!r}: {exc}") from None
        if not hasattr(self.tower, "output_tokens") or not hasattr(self.tower, "transformer"):
            raise ConfigError(f"model.image: open_clip model {model_name!r} has no token-level vision "
                              "transformer (use a ViT config)")
        self.tower.output_tokens = True
        if pretrained_path is not None:
            load_tower(self.tower, pretrained_path, "model.image.pretrained_path", prefix="visual.")
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.proj = nn.Linear(self.tower.transformer.width, width)
        self.type_embedding = nn.Parameter(torch.zeros(width))

    @classmethod
    def from_config(cls, config: ModelConfig, vocab: Vocabulary) -> "OpenClipImageEncoder":
        image, settings = config.image, settings_of(config.image, cls, "model.image")
        return cls(settings.open_clip_model, settings.open_clip_kwargs, config.width, image.image_size,
                   image.pretrained_path)

    def units(self) -> list[nn.Module]:
        """The tower's residual blocks (see :meth:`TimmImageEncoder.units`)."""
        return list(self.tower.transformer.resblocks)

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> Stream:
        """``image``: (B, 3, H, W) uint8; normalised here with CLIP's mean/std."""
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        _, tokens = self.tower(x)
        tokens = self.proj(tokens) + self.type_embedding
        return Stream(tokens, present[:, None].expand(-1, tokens.shape[1]))


@TEXT_ENCODERS.register("open_clip")
class OpenClipTextEncoder(nn.Module):
    """open_clip's text transformer, read as tokens; causal as trained, or bidirectional for fusion.

    It embeds open_clip BPE ids, so it needs the full vocabulary (``model.text.vocab=full``); each
    row gets open_clip's start-of-text token first, whose output is dropped.
    """

    Settings = OpenClipTextSettings

    def __init__(self, model_name: str, overrides: dict, width: int, context_length: int,
                 pretrained_path: str | None = None, bidirectional: bool = False) -> None:
        super().__init__()
        from open_clip.model import _build_text_tower

        embed_dim, cfg = open_clip_config(
            model_name, "text_cfg", {**overrides, "context_length": context_length + 1, "no_causal_mask": bidirectional},
            "model.text.open_clip_model")
        if cfg.get("vocab_size", FULL_BPE_SIZE) != FULL_BPE_SIZE or "hf_model_name" in cfg:
            raise ConfigError(f"model.text: open_clip model {model_name!r} does not use the open_clip BPE vocabulary")
        try:
            self.tower = _build_text_tower(embed_dim, cfg)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model.text: cannot build open_clip text tower {model_name!r}: {exc}") from None
        self.tower.output_tokens = True
        if pretrained_path is not None:
            load_tower(self.tower, pretrained_path, "model.text.pretrained_path")
        self.context_length = context_length + 1
        self.proj = nn.Linear(self.tower.transformer.width, width)
        self.type_embedding = nn.Parameter(torch.zeros(width))

    @classmethod
    def from_config(cls, config: ModelConfig, vocab: Vocabulary) -> "OpenClipTextEncoder":
        text = config.text
        if text.vocab != "full" or vocab.size != FULL_BPE_SIZE + len(SPECIAL_TOKENS):
            raise ConfigError("model.text.name=open_clip needs model.text.vocab=full "
                              "(its embedding table is indexed by open_clip BPE ids)")
        settings = settings_of(text, cls, "model.text")
        return cls(settings.open_clip_model, settings.open_clip_kwargs, config.width, text.context_length,
                   text.pretrained_path, settings.bidirectional)

    @staticmethod
    def to_open_clip_ids(ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary ids -> open_clip token ids (BPE, start/end of text, 0 for padding and unknown)."""
        clip = torch.where(ids >= len(SPECIAL_TOKENS), ids - len(SPECIAL_TOKENS), torch.zeros_like(ids))
        clip = torch.where(ids == BOS, torch.full_like(ids, FULL_BPE_SIZE - 2), clip)
        return torch.where(ids == EOS, torch.full_like(ids, FULL_BPE_SIZE - 1), clip)

    def units(self) -> list[nn.Module]:
        """The tower's residual blocks (see :meth:`TimmImageEncoder.units`)."""
        return list(self.tower.transformer.resblocks)

    def forward(self, ids: torch.Tensor, present: torch.Tensor) -> Stream:
        """``ids``: (B, L) PAD-padded full-vocabulary ids."""
        start = torch.full_like(ids[:, :1], FULL_BPE_SIZE - 2)
        clip_ids = torch.cat([start, self.to_open_clip_ids(ids)], dim=1)
        # open_clip's causal mask is built for its full context: pad to it, then drop the padding
        clip_ids = F.pad(clip_ids, (0, self.context_length - clip_ids.shape[1]))
        _, tokens = self.tower(clip_ids)
        tokens = self.proj(tokens[:, 1 : ids.shape[1] + 1]) + self.type_embedding
        return Stream(tokens, (ids != PAD) & present[:, None], ids=ids)
