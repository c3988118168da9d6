"""A small single-label image set made offline: the digits 0-9 drawn in this machine's TrueType fonts.

Usage: python tools/glyph_digits.py OUT [--train 3000] [--test 600] [--size 32] [--seed 0] [--convert]

Each image is one digit in a random font (every .ttf under /usr/share/fonts), size, angle (+-25
degrees), place, foreground and background colour (at least 80 grey levels apart), with pixel
noise: an MNIST-like set of small images, held out by no one, for time-to-accuracy benchmarks of
small presets (docs/benchmarks.md, issue #29). Written as the imagefolder layout
``OUT/{train,test}/<digit>/<n>.png``; with ``--convert`` also as shards in ``OUT/shards``
(``mmtl data convert --format imagefolder``, the directory to pass to tools/bench_recipe.py --data).
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
FONT_ROOT = Path("/usr/share/fonts")


def draw_digit(digit: int, fonts: list[Path], size: int, rng: random.Random) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``digit`` with random font, scale, angle, place, colours and noise."""
    background = rng.randrange(256)
    foreground = (background + rng.randrange(80, 177)) % 256
    canvas = 2 * size  # drawn large, rotated, then shrunk: smooth edges at any angle
    glyph = Image.new("L", (canvas, canvas), 0)
    font = ImageFont.truetype(str(rng.choice(fonts)), int(canvas * rng.uniform(0.45, 0.8)))
    ImageDraw.Draw(glyph).text((canvas / 2, canvas / 2), str(digit), fill=255, font=font, anchor="mm")
    glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR,
                         translate=(rng.uniform(-0.15, 0.15) * canvas, rng.uniform(-0.15, 0.15) * canvas))
    mask = np.asarray(glyph.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    tint = np.array([rng.uniform(0.7, 1.0) for _ in range(3)], dtype=np.float32)
    grey = background + (foreground - background) * mask
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (size, size, 3))
    pixels = np.clip(grey[..., None] * tint + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_split(out: Path, count: int, fonts: list[Path], size: int, rng: random.Random) -> None:
    """``count`` images, the ten digits in turn, into ``out/<digit>/<n>.png``."""
    for n in range(count):
        digit = n % 10
        path = out / str(digit) / f"{n:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_digit(digit, fonts, size, rng).save(path)


def main(argv: list[str] | None = None) -> int:
    """Write both splits (and their shards with ``--convert``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--convert", action="store_true", help="also write shards into OUT/shards")
    args = parser.parse_args(argv)
    fonts = sorted(FONT_ROOT.rglob("*.ttf"))
    if not fonts:
        print(f"glyph_digits: error: no .ttf fonts under {FONT_ROOT}", file=sys.stderr)
        return 2
    out, rng = Path(args.out), random.Random(args.seed)
    for split, count in (("train", args.train), ("test", args.test)):
        write_split(out / split, count, fonts, args.size, rng)
        print(f"{split}: {count} images in {len(fonts)} fonts")
    if args.convert:
        for split in ("train", "test"):
            subprocess.run([sys.executable, "-m", "mmtl", "data", "convert", "--format", "imagefolder", "--root",
                            str(out / split), "--out", str(out / "shards"), "--split", split, "--name", "glyph_digits",
                            "--no-progress", "--overwrite"], check=True, cwd=REPO)
        print("shards:", out / "shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
