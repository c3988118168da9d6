"""Benchmark: `mmtl serve` on loopback: requests/s, p50, p95 and the server's peak RSS at 1, 16 and 64
concurrent clients, and under 32 concurrent 9 MB uploads; the same load against the previous
hand-written http.server (from git, commit --baseline-ref) in the same run, for a ratio.

Usage: python tools/bench_serve.py [--checkpoint RUN_DIR] [--requests 320] [--concurrency 1 16 64]
                                   [--tasks recognition] [--uploads 32] [--upload-mb 9] [--max-seconds 60]
                                   [--baseline-ref da6707e] [--threads 1] [--workers 1]

Without --checkpoint it trains the `tiny` preset for a few steps on fresh shapes-world data in a
temporary directory (as tools/bench_inference.py does). Each level sends a bounded number of JSON
requests (base64 64x64 PNG + its document) from keep-alive clients and stops early after
--max-seconds. The upload phase sends one multipart body of --upload-mb MB (a noise PNG) from each
of --uploads clients at once. Only 127.0.0.1 is used. Prints a table and, last, one JSON line.
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
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from bench_inference import make_pairs, train_tiny  # tools/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parents[1]
OLD_SERVER = """
import sys
sys.path.insert(0, {folder!r})
import mmtl_old_serve as old
from mmtl.inference import Predictor
server = old.make_server(Predictor.from_pretrained({checkpoint!r}), "127.0.0.1", 0,
                         old.ServerLimits(max_body_bytes={max_body}), max_batch=16, max_wait_ms={wait})
print("serving on", server.url, flush=True)
server.serve_forever()
"""


class Server:
    """A server process on 127.0.0.1 and a sampler of its peak RSS (children included: --workers)."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        if "serving" not in line:
            self.proc.kill()
            sys.exit(f"server did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].split()[0]
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def rss(self) -> int:
        try:
            process = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
        except psutil.Error:
            return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def reset_peak(self) -> None:
        self.peak = self.rss()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server (children included): unlike latency, hardly affected by
        other work on a shared machine."""
        try:
            process = psutil.Process(self.proc.pid)
            return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])
        except psutil.Error:
            return 0.0

    def wait_ready(self, body: bytes, seconds: float = 180) -> None:
        """Until a prediction succeeds (worker processes load the model after the socket opens)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                time.sleep(0.5)
        sys.exit("server never answered a prediction")

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_clients(server: Server, requests: list[tuple[bytes, str]], concurrency: int, total: int,
                max_seconds: float) -> dict:
    """``concurrency`` keep-alive clients send ``total`` requests between them (stopping after
    ``max_seconds``); latency percentiles, requests/s, failures and the server's peak RSS."""
    latencies: list[float] = []
    batches: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    shares = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]
    stop_at = time.monotonic() + max_seconds
    server.reset_peak()
    cpu_before = server.cpu_seconds()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        for j in range(shares[index]):
            if time.monotonic() > stop_at:
                break
            body, content_type = requests[(index * 7 + j) % len(requests)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body, {"Content-Type": content_type})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
                continue
            elapsed = time.perf_counter() - start
            with lock:
                if resp.status == 200:
                    latencies.append(elapsed)
                    batches.append(json.loads(data).get("batch_size", 0))
                else:
                    failures.append(f"{resp.status}: {data[:120]!r}")
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / max(1, len(latencies) + len(failures))
    ordered = sorted(latencies) or [float("nan")]
    pct = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"concurrency": concurrency, "ok": len(latencies), "failed": len(failures),
            "first_failure": failures[0] if failures else None,
            "requests_per_s": round(len(latencies) / wall, 1), "p50_ms": round(pct(0.5) * 1000, 1),
            "p95_ms": round(pct(0.95) * 1000, 1), "server_cpu_ms_per_request": round(cpu_ms, 2),
            "mean_batch": round(statistics.mean(batches), 2) if batches else 0,
            "peak_rss_mb": round(server.peak / 2**20)}


def json_requests(checkpoint: str, tasks: str | None, count: int = 16) -> list[tuple[bytes, str]]:
    from mmtl.inference import Predictor  # noqa: PLC0415 - only for the image size

    size = Predictor.from_pretrained(checkpoint).config.model.image.image_size
    out = []
    for image, text in make_pairs(count, size):
        payload = {"image": base64.b64encode(image).decode(), "text": text}
        if tasks:
            payload["tasks"] = tasks
        out.append((json.dumps(payload).encode(), "application/json"))
    return out


def upload_request(megabytes: float, tasks: str | None) -> tuple[bytes, str]:
    """One multipart body holding a noise PNG of about ``megabytes`` MB (PNG cannot compress noise)."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    boundary = uuid.uuid4().hex
    fields = {"tasks": tasks} if tasks else {}
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="noise.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + buf.getvalue() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def old_server_command(checkpoint: str, ref: str, folder: Path, wait_ms: float, max_body: int) -> list[str] | None:
    """The pre-FastAPI server of commit ``ref`` as a runnable command, or None when git cannot show it."""
    done = subprocess.run(["git", "show", f"{ref}:mmtl/serve.py"], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        print(f"(no baseline: git show {ref}:mmtl/serve.py failed: {done.stderr.strip()[:200]})")
        return None
    (folder / "mmtl_old_serve.py").write_text(done.stdout)
    script = OLD_SERVER.format(folder=str(folder), checkpoint=checkpoint, max_body=max_body, wait=wait_ms)
    return [sys.executable, "-c", script]


def measure(server: Server, args: argparse.Namespace, small: list, upload: tuple[bytes, str]) -> dict:
    server.wait_ready(small[0][0])
    run_clients(server, small, 4, 16, args.max_seconds)  # warm-up
    levels = [run_clients(server, small, c, max(args.requests, c), args.max_seconds) for c in args.concurrency]
    uploads = run_clients(server, [upload], args.uploads, args.uploads, max(args.max_seconds, 120))
    return {"levels": levels, "uploads": uploads}


def print_table(name: str, result: dict, upload_mb: float) -> None:
    print(f"\n{name}")
    print(f"  {'clients':>7} {'ok':>5} {'failed':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms/req':>10} "
          f"{'peak RSS MB':>11} {'mean batch':>10}")
    for row in result["levels"]:
        print(f"  {row['concurrency']:>7} {row['ok']:>5} {row['failed']:>6} {row['requests_per_s']:>7} "
              f"{row['p50_ms']:>8} {row['p95_ms']:>8} {row['server_cpu_ms_per_request']:>10} {row['peak_rss_mb']:>11} "
              f"{row['mean_batch']:>10}")
    row = result["uploads"]
    print(f"  {row['concurrency']:>4}x{upload_mb:.0f}MB {row['ok']:>3} {row['failed']:>6} {row['requests_per_s']:>7} "
          f"{row['p50_ms']:>8} {row['p95_ms']:>8} {row['server_cpu_ms_per_request']:>10} {row['peak_rss_mb']:>11}"
          "   (uploads)")
    for row in [*result["levels"], result["uploads"]]:
        if row["first_failure"]:
            print(f"  e.g. failure at {row['concurrency']} clients: {row['first_failure']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="run or checkpoint directory (default: train a tiny model)")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=320, help="requests per concurrency level (bounded)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--tasks", default="recognition",
                        help="tasks of each request ('' for all; generation dominates the time then)")
    parser.add_argument("--uploads", type=int, default=32, help="concurrent upload clients")
    parser.add_argument("--upload-mb", type=float, default=9.0)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time bound of each level")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--baseline-ref", default="da6707e",
                        help="git commit whose mmtl/serve.py is the old http.server ('' to skip the baseline)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the servers (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="mmtl serve --workers")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server processes
    load_before = os.getloadavg()[0]
    max_body = 10 * 2**20
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mmtl-bench-serve-") as tmp:
        checkpoint = args.checkpoint or str(train_tiny(Path(tmp), args.train_steps))
        small = json_requests(checkpoint, args.tasks or None)
        upload = upload_request(args.upload_mb, args.tasks or None)
        commands = {"mmtl serve (FastAPI + uvicorn)": [
            sys.executable, "-m", "mmtl", "serve", "--checkpoint", checkpoint, "--port", "0",
            "--max-wait-ms", str(args.max_wait_ms), "--workers", str(args.workers)]}
        old = old_server_command(checkpoint, args.baseline_ref, Path(tmp), args.max_wait_ms, max_body) \
            if args.baseline_ref else None
        if old:
            commands[f"previous http.server ({args.baseline_ref})"] = old
        for name, command in commands.items():
            server = Server(command)
            try:
                results[name] = measure(server, args, small, upload)
            finally:
                server.stop()
            print_table(name, results[name], args.upload_mb)
    new, *rest = results.values()
    ratios, cpu_ratios = {}, {}
    if rest:
        for row_new, row_old in zip(new["levels"], rest[0]["levels"]):
            key = str(row_new["concurrency"])
            ratios[key] = round(row_new["requests_per_s"] / max(row_old["requests_per_s"], 1e-9), 2)
            cpu_ratios[key] = round(row_new["server_cpu_ms_per_request"] / max(row_old["server_cpu_ms_per_request"], 1e-9), 2)
        print(f"\nthroughput ratio new/old by clients: {ratios}; server CPU per request new/old: {cpu_ratios}")
    at16 = next((r for r in new["levels"] if r["concurrency"] == 16), None)
    summary = {
        "bench": "serve", "tasks": args.tasks or "all", "workers": args.workers, "threads": args.threads,
        "new": new, "old": rest[0] if rest else None, "ratio_new_over_old": ratios,
        "cpu_per_request_new_over_old": cpu_ratios,
        "target_16_clients": at16 and {"requests_per_s": at16["requests_per_s"], "p95_ms": at16["p95_ms"],
                                       "met": at16["requests_per_s"] >= 120 and at16["p95_ms"] <= 250},
        "target_uploads_rss": {"peak_rss_mb": new["uploads"]["peak_rss_mb"],
                               "met": new["uploads"]["peak_rss_mb"] <= 1536},
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), python {platform.python_version()}",
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
