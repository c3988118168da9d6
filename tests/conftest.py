"""Shared fixtures: a micro synthetic data set written once per session into a temp dir."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from data_pipelines.synthetic import write_shards

MICRO_SIZES = {"train": 96, "val": 16, "test": 16}


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes-world shards at 32x32 (the micro preset's image size)."""
    path = tmp_path_factory.mktemp("micro_data")
    write_shards(path, MICRO_SIZES, seed=1, difficulty="easy", image_size=32, shard_size=40)
    return path


def micro_overrides(data: Path, out: Path, steps: int = 3) -> list[str]:
    """Config overrides for a seconds-long run of the micro preset on ``data``."""
    return [
        f"data.path={data}", f"output_dir={out}", "model.preset=micro", f"train.steps={steps}",
        "data.batch_size=8", "train.log_every=1", "train.progress=false", "eval.max_samples=16",
        "train.warmup_steps=1", "model.decoder.max_length=48", "eval.generation.max_length=8",
    ]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Micro models run fastest on one thread (and do not stall when the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run an HTTP server (``serve_forever``) in a daemon thread; shut it down afterwards."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def without_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its BatchNorm layers replaced by identities: a half batch's BatchNorm
    statistics differ from the full batch's, so tests that compare gradients across batch splits
    (accumulation, data parallelism) take it out."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, torch.nn.Identity())
    return model


def sigterm_after_step(monkeypatch: pytest.MonkeyPatch, step: int) -> Any:
    """Make the Trainer send itself SIGTERM once it reaches ``step``; returns the original train_step."""
    import os
    import signal

    from mmtl.training.loop import Trainer

    original = Trainer.train_step

    def step_then_sigterm(self, batch, *args, **kwargs):
        out = original(self, batch, *args, **kwargs)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    return original
