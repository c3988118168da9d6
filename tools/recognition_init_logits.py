"""How much a recognition head's logits depend on the image at initialisation (issue #29).

Usage: python tools/recognition_init_logits.py DATA [--images 64] [--seeds 0,1] [--heads queries,pooled]
           [--set KEY=VALUE ...]

For the first ``--images`` training images of the shard folder DATA, per class head and seed: the std of
each class's logit across images (what the image moves) against the std across classes of the mean
logits (a per-class constant, the prior a softmax fits first); for the query head also the norm of the
attention output ``found`` against the normed query it is added to before the LayerNorm.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import mmtl.components  # noqa: E402,F401  (registers the components that configs name)
from mmtl.builder import components_from_data  # noqa: E402
from mmtl.config import load_config  # noqa: E402
from mmtl.models.fusion import with_inputs  # noqa: E402
from mmtl.models.layers import key_mask  # noqa: E402
from recipe_reference import read_split  # noqa: E402


def head_report(data: str, head_key: str, seed: int, images: torch.Tensor, overrides: list[str]) -> str:
    """One line: the logit spread across images and across classes of a freshly built model's head."""
    torch.manual_seed(seed)
    config = load_config(None, [f"data.path={data}", "tasks=[recognition]", f"seed={seed}",
                                f"task_settings.recognition.head={head_key}", *overrides])
    model = components_from_data(config).model.eval()
    with torch.no_grad():
        encoded = model.encoders["image"](images, torch.ones(len(images), dtype=torch.bool))
        stream = dataclasses.replace(encoded, modality="image")
        fused = model.fusion([stream])
        if model.input_norm is not None:
            fused = with_inputs({None: fused}, [stream], model.input_norm)[None]
        head = model.heads["recognition"]
        logits = head(fused.tokens, fused.valid)
        extra = ""
        if hasattr(head, "queries"):
            query = head.norm_q(head.queries).expand(len(images), -1, -1)
            found = head.attn(query, context=head.norm_kv(fused.tokens), mask=key_mask(fused.valid))
            extra = (f"; |found| {found.norm(dim=-1).mean():.2f} (across images {found.std(0).norm(dim=-1).mean():.2f})"
                     f" vs |normed query| {query.norm(dim=-1).mean():.2f}")
    across_images, across_classes = logits.std(0).mean(), logits.mean(0).std()
    return (f"{head_key} seed {seed}: logit std across images {across_images:.4f}, across classes "
            f"{across_classes:.4f}, ratio {across_images / across_classes:.3f}{extra}")


def main(argv: list[str] | None = None) -> int:
    """Print one line per head and seed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--heads", default="queries,pooled")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    size = load_config(None, [f"data.path={args.data}", *args.set]).model.image.image_size
    images = torch.stack([s.image for s in read_split(args.data, "train", size, limit=args.images)])
    for head_key in args.heads.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            print(head_report(args.data, head_key, seed, images, args.set), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
