"""Encoders: every registered one builds and runs; open_clip and timm weights load from local files only."""
from __future__ import annotations

import pytest
import torch

from mmtl.config import resolve_config, settings_of
from mmtl.errors import ConfigError
from mmtl.models.encoders import OpenClipImageEncoder, OpenClipTextEncoder, TimmImageEncoder
from mmtl.registry import IMAGE_ENCODERS, TEXT_ENCODERS
from mmtl.text import Vocabulary

import mmtl.components  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_thread")

VISION = {"patch_size": 16, "width": 32, "layers": 1, "head_width": 16}
TEXT = {"width": 32, "heads": 2, "layers": 1}
# micro-sized open_clip towers through config overrides (timm knobs: the micro preset's slim ResNet)
OPEN_CLIP_IMAGE = ["model.image.name=open_clip", f"model.image.open_clip_kwargs={ {**VISION, 'embed_dim': 16} }"]
OPEN_CLIP_TEXT = ["model.text.name=open_clip", "model.text.vocab=full",
                  f"model.text.open_clip_kwargs={ {**TEXT, 'embed_dim': 16} }"]
FULL = Vocabulary(None)
SMALL = Vocabulary.from_texts(["a red circle"])


def _config(*overrides: str):
    return resolve_config({}, ["model.preset=micro", *overrides]).model


def _images(n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


def _clip_checkpoint(path, context_length: int = 65):
    """A random full open_clip model of the micro towers, saved the way open_clip checkpoints are."""
    import open_clip

    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, embed_dim=16,
                                  vision_cfg={**open_clip.get_model_config("ViT-B-32")["vision_cfg"], **VISION, "image_size": 32},
                                  text_cfg={**open_clip.get_model_config("ViT-B-32")["text_cfg"], **TEXT,
                                            "context_length": context_length})
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, path)
    return clip.eval()


@pytest.mark.parametrize("image_name", IMAGE_ENCODERS.keys())
@pytest.mark.parametrize("text_name", TEXT_ENCODERS.keys())
def test_every_encoder_pair_builds_trains_and_handles_missing_inputs(image_name: str, text_name: str) -> None:
    from mmtl.models.model import MultiTaskModel
    from mmtl.registry import TASKS
    from mmtl.tasks.base import TaskContext

    overrides = [f"model.image.name={image_name}", f"model.text.name={text_name}"]
    overrides += OPEN_CLIP_IMAGE[1:] if image_name == "open_clip" else []
    overrides += OPEN_CLIP_TEXT[1:] if text_name == "open_clip" else []
    config = _config(*overrides)
    vocab = FULL if text_name == "open_clip" else SMALL
    task = TASKS.get("summarization")(TaskContext([], vocab, config))
    model = MultiTaskModel(config, [task], vocab)
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(vocab.encode("a red circle", 16)), torch.zeros(1, dtype=torch.long)],
                                          batch_first=True)
    image_stream = model.encoders["image"](_images(), torch.tensor([True, False]))
    text_stream = model.encoders["text"](ids, (ids != 0).any(1))
    fused = model.fusion([image_stream, text_stream])
    (fused.pooled.sum() + fused.tokens.sum()).backward()
    grads = [p.grad for p in model.encoders.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert image_stream.tokens.shape[-1] == text_stream.tokens.shape[-1] == 32
    assert text_stream.valid[1].sum() == 0 and image_stream.valid[1].sum() == 0
    assert torch.isfinite(fused.tokens).all()


def test_open_clip_towers_load_local_weights_and_match_the_original(tmp_path) -> None:
    clip = _clip_checkpoint(tmp_path / "clip.pt")
    image = OpenClipImageEncoder.from_config(_config(*OPEN_CLIP_IMAGE, f"model.image.pretrained_path={tmp_path / 'clip.pt'}"), SMALL)
    for name, tensor in clip.visual.state_dict().items():
        assert torch.equal(image.tower.state_dict()[name], tensor), name
    x = (_images().float() - image.mean) / image.std
    clip.visual.output_tokens = True
    with torch.no_grad():
        assert torch.allclose(image.tower.eval()(x)[1], clip.visual(x)[1])

    text = OpenClipTextEncoder.from_config(_config(*OPEN_CLIP_TEXT, f"model.text.pretrained_path={tmp_path / 'clip.pt'}"), FULL)
    assert torch.equal(text.tower.token_embedding.weight, clip.token_embedding.weight)
    assert torch.equal(text.tower.transformer.resblocks[0].mlp.c_fc.weight, clip.transformer.resblocks[0].mlp.c_fc.weight)
    ids = torch.tensor([FULL.encode("a red circle", 16)])
    bpe = torch.tensor([[49406] + [i - 4 for i in FULL.encode("a red circle", 16)]])
    clip_ids = torch.nn.functional.pad(bpe, (0, 65 - bpe.shape[1]))
    with torch.no_grad():
        ours = text.eval()(ids, torch.tensor([True])).tokens
        x = clip.token_embedding(clip_ids) + clip.positional_embedding
        ref = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))[:, 1 : ids.shape[1] + 1]
        ref = text.proj(ref) + text.type_embedding
    assert torch.allclose(ours, ref, atol=1e-5)


def test_open_clip_loading_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.image.pretrained_path: file not found"):
        OpenClipImageEncoder.from_config(_config(*OPEN_CLIP_IMAGE, f"model.image.pretrained_path={tmp_path / 'no.pt'}"), SMALL)
    _clip_checkpoint(tmp_path / "clip.pt", context_length=77)
    with pytest.raises(ConfigError, match="positional_embedding"):  # micro context is 64 + 1 positions
        OpenClipTextEncoder.from_config(_config(*OPEN_CLIP_TEXT, f"model.text.pretrained_path={tmp_path / 'clip.pt'}"), FULL)
    with pytest.raises(ConfigError, match="model.text.vocab=full"):
        OpenClipTextEncoder.from_config(_config("model.text.name=open_clip"), SMALL)
    with pytest.raises(ConfigError, match="unknown open_clip model config 'ViT-Nope'"):
        OpenClipImageEncoder.from_config(_config(*OPEN_CLIP_IMAGE, "model.image.open_clip_model=ViT-Nope"), SMALL)


def test_timm_encoder_loads_local_safetensors_and_matches(tmp_path) -> None:
    from safetensors.torch import save_file

    config = _config()
    torch.manual_seed(2)
    source = TimmImageEncoder.from_config(config, SMALL)
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(tmp_path / "resnet.safetensors"))
    torch.manual_seed(3)
    loaded = TimmImageEncoder.from_config(_config(f"model.image.pretrained_path={tmp_path / 'resnet.safetensors'}"), SMALL)
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], tensor), name
    x = _images().float()
    with torch.no_grad():
        assert torch.allclose(loaded.backbone.eval().forward_features(x), source.backbone.eval().forward_features(x))
    with pytest.raises(ConfigError, match="file not found"):
        TimmImageEncoder.from_config(_config(f"model.image.pretrained_path={tmp_path / 'missing.safetensors'}"), SMALL)


def test_feature_pool_shrinks_the_token_grid_and_keeps_every_position() -> None:
    """The tiny preset's stride-8 ResNet gives an 8x8 map at 64 px; feature_pool=2 makes it 4x4 tokens,
    each the mean of a 2x2 block (ceil mode: an odd map keeps its last row and column)."""
    config = resolve_config({}, ["model.preset=tiny"]).model
    settings = settings_of(config.image, TimmImageEncoder, "model.image")
    assert settings.feature_pool == 2 and settings.timm_kwargs["output_stride"] == 8
    encoder = IMAGE_ENCODERS.get("timm").from_config(config, SMALL).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    stream = encoder(images, torch.ones(2, dtype=torch.bool))
    assert stream.tokens.shape == (2, 16, config.width)
    x = (images.float() - encoder.mean) / encoder.std
    full = encoder.backbone.forward_features(x)
    assert full.shape[-2:] == (8, 8)
    pooled = encoder._features(x)
    assert torch.allclose(pooled[:, 0], full[:, :, :2, :2].mean((2, 3)), atol=1e-5)
    odd = TimmImageEncoder(settings.timm_model, settings.timm_kwargs, 16, 72, feature_pool=2)
    assert odd.position.shape[0] == 25  # a 9x9 map pools to 5x5


def test_feature_pool_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="model.image.feature_pool"):
        resolve_config({}, ["model.image.feature_pool=0"])
