"""A real training process killed from outside mid-run (SIGTERM: it saves and exits 143; SIGKILL: it
dies, the last periodic checkpoint is all there is) and resumed ends with the same weights, bit for
bit, as an uninterrupted run. (tests/test_training_scale.py does the same in-process, with the
signal sent at a chosen step; here the signal comes from another process at whatever point the
run has reached.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmtl.checkpoint import LATEST, resolve_checkpoint
from tests.conftest import micro_overrides

STEPS = 8
EXTRA = [f"train.steps={STEPS}", "train.checkpoint_every=2", "train.device=cpu", "data.num_workers=0",
         "data.shuffle_buffer=20", "train.ema_decay=0.9", "balancer.name=dwa"]


def _train(data: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "mmtl", "train", *micro_overrides(data, out), *EXTRA, *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(run) / "model.safetensors"))


@pytest.fixture(scope="module")
def whole(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = _train(micro_data, run)
    assert proc.wait(timeout=1800) == 0, proc.stderr.read()
    return run


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)])
def test_a_killed_run_resumes_to_the_same_weights_bit_for_bit(micro_data: Path, tmp_path: Path, whole: Path,
                                                               sig: int, code: int) -> None:
    run = tmp_path / "run"
    proc = _train(micro_data, run)
    first = run / "checkpoints" / LATEST  # written after the first periodic checkpoint
    deadline = time.monotonic() + 1800
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)  # mid-run: after the first periodic checkpoint, long before the last step
    assert proc.wait(timeout=600) == code, proc.stderr.read()
    stopped_at = int(resolve_checkpoint(run).name.split("-")[1])
    assert 2 <= stopped_at < STEPS
    resumed = _train(micro_data, run, "--resume", "latest")
    assert resumed.wait(timeout=1800) == 0, resumed.stderr.read()
    a, b = _weights(whole), _weights(run)
    assert resolve_checkpoint(run).name == f"step-{STEPS:08d}"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
