"""Benchmark against a peer: open_clip's own training loop (CoCa) versus mmtl, same data, matched size.

Usage: python tools/bench_peer_openclip.py [--steps 40] [--warmup 10] [--samples 2048] [KEY=VALUE ...]
       e.g. model.preset=base data.batch_size=64 data.num_workers=8 train.precision=bf16

Both train image captioning from the same synthetic shards, streamed by their own loaders with
the same number of workers and the same batch size:

  mmtl      ``Trainer`` on ``tasks=[captioning]`` with the given preset (a timm ViT image encoder);
  open_clip ``python -m open_clip_train.main`` (the loop shipped in the open_clip_torch wheel),
            training a CoCa model whose vision tower copies mmtl's ViT (width, depth, heads, patch,
            image size), whose text tower has mmtl's fusion depth and whose multimodal decoder has
            mmtl's decoder depth, all at mmtl's width. CoCa also trains its contrastive loss, as
            it does by default; the shards' images are written out as files with a CSV of
            captions for its own CSV loader.

Printed: samples/s of each (steps after the warm-up; open_clip's own "Batch (t)" log lines), their
ratio, the parameter counts and the training FLOPs per sample of both. Final line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds

import mmtl.components  # noqa: F401  (registers the tasks the data code counts)
from data_pipelines.shards import split_shards
from data_pipelines.shapes_world import write_shards
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import ExperimentConfig, load_config
from mmtl.training.acceleration import compile_blocks
from mmtl.training.loop import Trainer

PRECISIONS = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp", "pure_bf16": "pure_bf16"}
LAUNCHER = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
            "from open_clip_train.main import main; main(sys.argv[2:])")


def repack_for_open_clip(source: Path, split: str, out: Path) -> Path:
    """Write the split's images as files plus a CSV of (file, first caption) for open_clip's CSV loader.

    (open_clip_train 3.3's webdataset reader expects the ``fname`` records of webdataset < 1.0, so its
    CSV loader is the one that runs next to current webdataset.)"""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle"]
    for url in split_shards(str(source), split):
        for sample in wds.WebDataset(url, shardshuffle=False):
            caption = json.loads(sample["json"])["captions"][0].replace("\t", " ")
            image_key = next(k for k in ("jpg", "png") if k in sample)
            path = images / f"{sample['__key__']}.{image_key}"
            path.write_bytes(sample[image_key])
            rows.append(f"{path}\t{caption}")
    table = out / "train.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def coca_config(trainer: Trainer, config: ExperimentConfig) -> dict:
    """A CoCa model config matched to mmtl's captioning model (its image encoder must be a timm ViT)."""
    backbone = trainer.model.encoders["image"].backbone
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "patch_embed"):
        raise SystemExit("bench_peer_openclip needs a ViT image encoder (e.g. model.preset=base, or "
                         "model.image.timm_model=vit_tiny_patch16_224 with model.image.timm_kwargs.img_size)")
    width, heads = config.model.width, config.model.num_heads
    context = config.model.decoder.max_length
    return {
        "embed_dim": width,  # CoCa's multimodal decoder reads the image tokens at this width
        "vision_cfg": {"image_size": config.model.image.image_size, "layers": len(backbone.blocks),
                       "width": backbone.embed_dim, "head_width": backbone.embed_dim // backbone.blocks[0].attn.num_heads,
                       "patch_size": backbone.patch_embed.patch_size[0], "attentional_pool": True,
                       "attn_pooler_heads": 8, "output_tokens": True},
        "text_cfg": {"context_length": context, "vocab_size": 49408, "width": width, "heads": heads,
                     "layers": config.model.fusion.depth, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": context, "vocab_size": 49408, "width": width, "heads": heads,
                           "layers": config.model.decoder.depth, "attn_pooler_heads": 8},
        "custom_text": True,
    }


def time_mmtl(trainer: Trainer, warmup: int, steps: int) -> float:
    """Samples/s of mmtl's training step fed by its streaming loader."""
    batches = iter(trainer._loader())
    started = 0.0
    for index in range(warmup + steps):
        if index == warmup:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        trainer.train_step(next(batches).to(trainer.device))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * trainer.config.data.batch_size / (time.perf_counter() - started)


def run_open_clip(model_file: Path, table: Path, config: ExperimentConfig, samples: int, logs: Path,
                  warmup: int) -> tuple[float, str]:
    """Samples/s that open_clip's loop logs (after ``warmup`` steps), and the tail of its output."""
    name = model_file.stem
    args = [sys.executable, "-c", LAUNCHER, str(model_file),
            "--train-data", str(table), "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--train-num-samples", str(samples),
            "--batch-size", str(config.data.batch_size), "--epochs", "1", "--workers", str(config.data.num_workers),
            "--model", name, "--precision", PRECISIONS[config.train.precision if config.train.precision != "auto"
                                                       else ("bf16" if torch.cuda.is_available() else "fp32")],
            "--lr", str(config.train.lr), "--warmup", "5", "--log-every-n-steps", "1", "--logs", str(logs),
            "--name", "peer", "--report-to", "", "--save-frequency", "0", "--seed", str(config.seed)]
    if config.train.compile:
        args.append("--torchcompile")
    out = subprocess.run(args, capture_output=True, text=True)
    text = out.stdout + out.stderr
    rates = [float(m) for m in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s", text)]
    if out.returncode != 0 or len(rates) <= warmup:
        raise SystemExit(f"open_clip's loop failed or logged too few steps (exit {out.returncode}):\n{text[-3000:]}")
    return statistics.median(rates[warmup:]), text[-1500:]


def training_flops_per_sample(model: torch.nn.Module, loss_fn, batch_size: int) -> float:
    from mmtl.flop_count import count_flops

    return count_flops(lambda: loss_fn(model).backward()) / batch_size


def open_clip_stats(model_file: Path, config: ExperimentConfig, device: torch.device) -> tuple[int, float]:
    """Parameters and training FLOPs per sample of the CoCa model."""
    import open_clip

    open_clip.add_model_config(str(model_file))
    model = open_clip.create_model(model_file.stem).to(device)
    size, context = config.data.batch_size, config.model.decoder.max_length
    images = torch.randn(size, 3, config.model.image.image_size, config.model.image.image_size, device=device)
    texts = torch.randint(1, 49000, (size, context), device=device)
    loss = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)

    def step(m):
        out = m(images, texts)
        return sum(loss(**out, output_dict=True).values())

    return sum(p.numel() for p in model.parameters()), training_flops_per_sample(model, step, size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2048, help="synthetic training samples to write")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmtl-bench-peer-"))
    config = load_config(None, [f"data.path={work / 'data'}", f"output_dir={work / 'run'}", "train.progress=false",
                                "tasks=[captioning]", *args.overrides])
    write_shards(config.data.path, {"train": args.samples}, image_size=config.model.image.image_size,
                 shard_size=max(64, args.samples // max(1, 2 * config.data.num_workers)))
    table = repack_for_open_clip(Path(config.data.path), "train", work / "open_clip")
    trainer = Trainer(config)
    model_file = work / "mmtl_coca_matched.json"
    model_file.write_text(json.dumps(coca_config(trainer, config)))

    batch = next(iter(trainer._loader())).to(trainer.device)
    ours_params = sum(p.numel() for p in trainer.model.parameters())
    ours_flops = training_flops_per_sample(trainer.model, lambda m: sum(m(batch).values()), len(batch))
    theirs_params, theirs_flops = open_clip_stats(model_file, config, trainer.device)
    if config.train.compile:
        compile_blocks(trainer.model)
    ours = time_mmtl(trainer, args.warmup, args.steps)
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    samples = (args.warmup + args.steps) * config.data.batch_size
    theirs, _ = run_open_clip(model_file, table, config, samples, work / "logs", args.warmup)
    result = {
        "bench": "peer_open_clip", "preset": config.model.preset,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "precision": config.train.precision, "compile": config.train.compile, "batch_size": config.data.batch_size,
        "num_workers": config.data.num_workers, "samples_per_s": round(ours, 1),
        "baseline_samples_per_s": round(theirs, 1), "ratio": round(ours / theirs, 3),
        "params": ours_params, "baseline_params": theirs_params,
        "gflops_per_sample": round(ours_flops / 1e9, 2), "baseline_gflops_per_sample": round(theirs_flops / 1e9, 2),
    }
    print(f"{'':<12}{'samples/s':>12}{'params (M)':>12}{'GFLOP/sample':>14}")
    print(f"{'mmtl':<12}{ours:>12.1f}{ours_params / 1e6:>12.1f}{ours_flops / 1e9:>14.2f}")
    print(f"{'open_clip':<12}{theirs:>12.1f}{theirs_params / 1e6:>12.1f}{theirs_flops / 1e9:>14.2f}")
    print(f"ratio mmtl / open_clip: {ours / theirs:.2f}x samples/s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
