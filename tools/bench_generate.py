"""Benchmark: KV-cached against uncached decoding of a fixed number of tokens, same model, same run.

    python tools/bench_generate.py [--preset small] [--batch 16] [--tokens 32] [--beams 1] [--repeats 3]

The model is the preset's full MultiTaskModel with random weights; its summarization decoder
decodes from the fused image + document tokens of a random batch. ``min_length`` = tokens forces
every row to decode exactly that many tokens (no early EOS). Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from data_pipelines.loader import Collator, Example
from mmtl.builder import build_components
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import GenerationConfig, resolve_config
from mmtl.text import Vocabulary

CLASSES = ["red circle", "blue square", "green triangle"]


def _batch(parts, size: int, image_size: int, text_tokens: int, vocab: Vocabulary):
    torch.manual_seed(0)
    examples = []
    for i in range(size):
        ids = torch.randint(4, vocab.size, (text_tokens,)).tolist()
        examples.append(Example(str(i), torch.randint(0, 256, (3, image_size, image_size), dtype=torch.uint8), ids, {}, {}))
    return Collator(parts.tasks, image_size)(examples)


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=96, help="document length fed to the fusion")
    parser.add_argument("--vocab", type=int, default=1000, help="compact vocabulary rows (BPE ids 0..N-1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = resolve_config({}, [f"model.preset={args.preset}", "tasks=[summarization]",
                                 f"model.decoder.max_length={max(40, args.tokens + 1)}"])
    vocab = Vocabulary(list(range(args.vocab)))
    parts = build_components(config, CLASSES, vocab)
    model = parts.model.eval()
    batch = _batch(parts, args.batch, config.model.image.image_size, args.text_tokens, vocab)
    with torch.no_grad():
        fused = model.fuse(batch, ("image", "text"), {})
    decoder = model.heads["summarization"]
    gen = GenerationConfig(max_length=args.tokens, min_length=args.tokens, num_beams=args.beams)

    def run(use_cache: bool) -> torch.Tensor:
        return decoder.generate(fused.tokens, fused.valid, config=gen, use_cache=use_cache)

    run(True)  # warm-up
    cached_s, cached = _time(lambda: run(True), args.repeats)
    plain_s, plain = _time(lambda: run(False), args.repeats)
    assert cached.shape == (args.batch, args.tokens), cached.shape
    identical = bool(torch.equal(cached, plain))
    tokens = args.batch * args.tokens
    print(f"preset={args.preset} batch={args.batch} tokens={args.tokens} beams={args.beams} "
          f"memory={tuple(fused.tokens.shape)} threads={torch.get_num_threads()}")
    print(f"{'decoding':<10} {'seconds':>8} {'tokens/s':>9}")
    print(f"{'cached':<10} {cached_s:>8.3f} {tokens / cached_s:>9.0f}")
    print(f"{'uncached':<10} {plain_s:>8.3f} {tokens / plain_s:>9.0f}")
    print(json.dumps({
        "bench": "generate", "preset": args.preset, "batch": args.batch, "tokens": args.tokens, "beams": args.beams,
        "cached_s": round(cached_s, 4), "uncached_s": round(plain_s, 4), "speedup": round(plain_s / cached_s, 2),
        "identical": identical, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }))


if __name__ == "__main__":
    main()
