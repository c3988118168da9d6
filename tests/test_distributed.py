"""Data-parallel training on the CPU (gloo): 2 processes equal 1 process on the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from data_pipelines.loader import make_loader
from mmtl.config import resolve_config
from mmtl.training.loop import Trainer
from tests.conftest import micro_overrides, without_batchnorm

STEPS = 3
GLOBAL_BATCH = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_batches(trainer: Trainer) -> list:
    """The same fixed global batches on every process (read as one rank of one)."""
    data, model = trainer.config.data, trainer.config.model
    loader = make_loader(data.path, data.train_split, tasks=trainer.components.tasks, vocab=trainer.components.vocab,
                         image_size=model.image.image_size, context_length=model.text.context_length,
                         batch_size=GLOBAL_BATCH, train=True, seed=0, rank=0, world_size=1)
    batches = iter(loader)
    return [next(batches) for _ in range(STEPS)]


def _train(overrides: list[str], rank: int, world_size: int) -> dict:
    torch.set_num_threads(1)
    trainer = Trainer(resolve_config({}, overrides))
    without_batchnorm(trainer.model)
    losses = []
    for batch in _global_batches(trainer):
        rows = range(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        out = trainer.train_step(batch.subset(rows) if world_size > 1 else batch)
        losses.append({k: float(v) for k, v in out.items() if "/" not in k and k != "grad_norm"})
    return {"losses": losses, "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
            "weights": trainer.balancer.task_weights()}


def _worker(rank: int, world_size: int, port: int, overrides: list[str], out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = _train(overrides, rank, world_size)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("balancer", ["uncertainty", "mgda"])
def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(micro_data: Path, tmp_path: Path, balancer: str) -> None:
    overrides = micro_overrides(micro_data, tmp_path / "run") + [
        f"balancer.name={balancer}", "train.device=cpu", "train.monitor_every=0"]
    single = _train(overrides + ["train.overwrite=true"], 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), overrides + ["train.overwrite=true"], str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in ranks:  # both ranks report the global losses and hold the same weights as one process
        for mine, theirs in zip(result["losses"], single["losses"]):
            assert mine.keys() == theirs.keys()
            assert all(abs(mine[k] - theirs[k]) < 1e-4 * max(1.0, abs(theirs[k])) for k in mine), (mine, theirs)
        worst = max((result["params"][k] - single["params"][k]).abs().max().item() for k in single["params"])
        assert worst < 1e-4
        assert all(abs(result["weights"][t] - single["weights"][t]) < 1e-4 for t in single["weights"])
    assert all(torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]) for k in ranks[0]["params"])


def test_torchrun_trains_with_two_processes_and_rank_zero_writes_the_run(micro_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mmtl", "train", *micro_overrides(micro_data, run, steps=3), "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # one writer: rank 0
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    assert (run / "checkpoints" / "LATEST").read_text() == "step-00000003"
