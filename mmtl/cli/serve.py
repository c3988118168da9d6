"""``mmtl serve``: serve a trained model over HTTP (JSON API and web page)."""
from __future__ import annotations

import argparse

from mmtl.cli.common import Subcommands
from mmtl.config import GENERATION_BOUNDS
from mmtl.errors import MMTLError

MOST_BEAMS = GENERATION_BOUNDS["num_beams"][1]  # the largest beam decoding allows (generation.num_beams)


def register(sub: Subcommands) -> None:
    """Add ``mmtl serve``."""
    sv = sub.add_parser("serve", help="serve a trained model over HTTP: JSON API at /v1/predict, web page at /",
                        epilog="endpoints: POST /v1/predict, GET /healthz, GET /v1/info, GET /openapi.json, GET /")
    sv.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    sv.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    sv.add_argument("--max-batch", type=int, default=16, help="most requests batched into one forward pass")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    sv.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MiB (default 10)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest decoded image, in pixels")
    sv.add_argument("--max-text-chars", type=int, default=20_000, help="longest text, in characters")
    sv.add_argument("--max-beams", type=int, default=8,
                    help=f"largest num_beams a request may ask for (at most {MOST_BEAMS})")
    sv.add_argument("--max-concurrency", type=int, default=256,
                    help="connections plus requests at once; more are answered 503 (default 256)")
    sv.add_argument("--read-timeout", type=float, default=30.0,
                    help="seconds a request's headers and body may take to arrive (default 30)")
    sv.add_argument("--workers", type=int, default=1,
                    help="processes serving the same port, each with its own copy of the model (default 1)")
    sv.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from mmtl.serve import ServerLimits, ServeSettings, serve

    for flag, value in (("--max-body-mb", args.max_body_mb), ("--max-pixels", args.max_pixels),
                        ("--max-text-chars", args.max_text_chars), ("--max-beams", args.max_beams),
                        ("--max-concurrency", args.max_concurrency), ("--read-timeout", args.read_timeout),
                        ("--workers", args.workers)):
        if not value > 0 or value != value or value == float("inf"):
            raise MMTLError(f"{flag} must be positive and finite, got {value}")
    if args.max_beams > MOST_BEAMS:
        raise MMTLError(f"--max-beams must be at most {MOST_BEAMS}, got {args.max_beams}")
    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels,
                          max_text_chars=args.max_text_chars, max_beams=args.max_beams,
                          max_concurrency=args.max_concurrency, read_timeout_s=args.read_timeout)
    settings = ServeSettings(args.checkpoint, limits, args.max_batch, args.max_wait_ms, args.device, args.precision)
    serve(settings, args.host, args.port, workers=args.workers)
    return 0
