"""Benchmark: inference throughput, batched versus one pair at a time, and `mmtl serve` under load.

Usage: python tools/bench_inference.py [--checkpoint RUN_DIR] [--pairs 48] [--batch-size 16]
                                       [--requests 48] [--concurrency 1 4 16] [--device cpu] [--threads N]

Without --checkpoint it writes a small shapes-world data set and trains the `tiny` preset for a
few steps in a temporary directory (enough for timing, not for quality). Then, on the same
image-text pairs (64x64 scenes with their documents; all three tasks):

1. Predictor.predict one pair at a time versus Predictor.predict_batch in batches of 16;
2. `mmtl serve` in its own process on 127.0.0.1 (dynamic batching on), hit by 1, 4 and 16
   concurrent keep-alive clients, each sending its share of a bounded number of JSON requests:
   latency p50/p95, requests/s and the mean batch the server formed.

Prints a table and, last, one JSON line (ratio = batched / one-at-a-time pairs per second) with the
1-minute load average before and after: other work on the machine skews small-batch timings most.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import mmtl.components  # noqa: F401  (registers the tasks the data code counts)
from data_pipelines.shapes_world import generate_sample, resolve_difficulty, write_shards
from mmtl.inference import Predictor


def train_tiny(workdir: Path, steps: int) -> Path:
    """A tiny-preset run trained for ``steps`` steps on fresh synthetic data (in a child process, so
    that nothing training leaves behind, such as loader workers, runs beside the timings)."""
    data, run = workdir / "data", workdir / "run"
    write_shards(data, {"train": 256, "val": 16, "test": 16}, seed=0, difficulty="medium", image_size=64)
    done = subprocess.run([sys.executable, "-m", "mmtl", "train", f"data.path={data}", f"output_dir={run}",
                           "model.preset=tiny", f"train.steps={steps}", "data.batch_size=16", "train.progress=false",
                           "train.warmup_steps=1", "eval.max_samples=16"])
    if done.returncode:
        sys.exit(f"training the benchmark model failed ({done.returncode})")
    return run


def make_pairs(n: int, image_size: int) -> list[tuple[bytes, str]]:
    """``n`` shapes-world scenes as PNG bytes with their documents (a held-out seed)."""
    difficulty = resolve_difficulty("medium")
    pairs = []
    for i in range(n):
        annotation, image = generate_sample(i, 12345, difficulty, image_size)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        pairs.append((buf.getvalue(), annotation["document"]))
    return pairs


def bench_predictor(predictor: Predictor, pairs: list[tuple[bytes, str]], batch_size: int) -> dict:
    """Pairs per second one at a time and in batches (images decoded from bytes in both)."""
    images, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    predictor.predict_batch(images[:batch_size], texts[:batch_size])  # warm-up
    predictor.predict(images[0], texts[0])
    start = time.perf_counter()
    for image, text in zip(images, texts):
        predictor.predict(image, text)
    single = len(pairs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        predictor.predict_batch(images[i:i + batch_size], texts[i:i + batch_size])
    batched = len(pairs) / (time.perf_counter() - start)
    return {"single_pairs_per_s": round(single, 2), "batched_pairs_per_s": round(batched, 2),
            "ratio": round(batched / single, 2)}


def start_server(checkpoint: str, device: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmtl", "serve", "--checkpoint", checkpoint, "--port", "0", "--device", device,
         "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.split(" on ", 1)[1].split()[0]


def load_clients(url: str, bodies: list[bytes], concurrency: int, total: int) -> dict:
    """``concurrency`` keep-alive clients send ``total`` requests between them; latency and throughput."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    batches: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    shares = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        for j in range(shares[index]):
            body = bodies[(index * 7 + j) % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = json.loads(resp.read())
            except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                continue
            elapsed = time.perf_counter() - start
            with lock:
                if resp.status != 200:
                    failures.append(payload.get("error", str(resp.status)))
                else:
                    latencies.append(elapsed)
                    batches.append(payload["batch_size"])
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        print(f"  {len(failures)} of {total} requests failed at concurrency {concurrency}, e.g. {failures[0]}")
    ordered = sorted(latencies)
    pct = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"concurrency": concurrency, "requests": len(latencies), "p50_ms": round(pct(0.5) * 1000, 1),
            "p95_ms": round(pct(0.95) * 1000, 1), "requests_per_s": round(len(latencies) / wall, 2),
            "mean_batch": round(statistics.mean(batches), 2), "failed": len(failures)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="run or checkpoint directory (default: train a tiny model)")
    parser.add_argument("--train-steps", type=int, default=5, help="steps of the throw-away tiny model")
    parser.add_argument("--pairs", type=int, default=48, help="pairs for the predictor benchmark")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="server batching window")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads here and in the server (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server process
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="mmtl-bench-inf-") as tmp:
        checkpoint = args.checkpoint or str(train_tiny(Path(tmp), args.train_steps))
        predictor = Predictor.from_pretrained(checkpoint, device=args.device)
        pairs = make_pairs(args.pairs, predictor.config.model.image.image_size)
        offline = bench_predictor(predictor, pairs, args.batch_size)
        print(f"\npredictor, {args.pairs} pairs (image + document, all tasks), device {args.device}")
        print(f"  one at a time  {offline['single_pairs_per_s']:>8.2f} pairs/s")
        print(f"  batch {args.batch_size:<8} {offline['batched_pairs_per_s']:>8.2f} pairs/s   "
              f"ratio {offline['ratio']:.2f}x")
        del predictor

        bodies = [json.dumps({"image": base64.b64encode(img).decode(), "text": text}).encode()
                  for img, text in pairs[:16]]
        proc, url = start_server(checkpoint, args.device, args.batch_size, args.max_wait_ms)
        try:
            load_clients(url, bodies, 1, 4)  # warm-up
            server = [load_clients(url, bodies, c, max(args.requests, c)) for c in args.concurrency]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nmmtl serve (max batch {args.batch_size}, window {args.max_wait_ms} ms), loopback JSON requests")
    print(f"  {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'mean batch':>10}")
    for row in server:
        print(f"  {row['concurrency']:>7} {row['requests']:>8} {row['p50_ms']:>8} {row['p95_ms']:>8} "
              f"{row['requests_per_s']:>8} {row['mean_batch']:>10}")
    result = {
        "bench": "inference", "preset": "tiny" if not args.checkpoint else "checkpoint", "device": args.device,
        "batch_size": args.batch_size, **offline, "server": server,
        "server_scaling": round(server[-1]["requests_per_s"] / server[0]["requests_per_s"], 2),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads), python {platform.python_version()}",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
