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

from data_pipelines.loader import LoaderSettings, make_loader
from mmtl.config import resolve_config
from mmtl.errors import ConfigError, MMTLError
from mmtl.training import fsdp
from mmtl.training.distributed import DistContext, balanced_backward
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
    loader = make_loader(data.path, data.train_split, trainer.components.tasks, trainer.components.vocab,
                         LoaderSettings(image_size=model.image.image_size, context_length=model.text.context_length,
                                        batch_size=GLOBAL_BATCH, train=True, seed=0, rank=0, world_size=1))
    batches = iter(loader)
    return [next(batches) for _ in range(STEPS)]


def _train(overrides: list[str], rank: int, world_size: int, keep: list | None = None) -> dict:
    torch.set_num_threads(1)
    trainer = Trainer(resolve_config({}, overrides))
    without_batchnorm(trainer.model)
    losses = []
    for batch in _global_batches(trainer):
        rows = range(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        out = trainer.train_step(batch.subset(rows) if world_size > 1 else batch)
        losses.append({k: float(v) for k, v in out.items() if "/" not in k and k != "grad_norm"})
    params = {k: fsdp.full(v.detach()).clone() for k, v in trainer.model.named_parameters()}  # collective if sharded
    if keep is not None:
        keep.append(trainer)
    local = sum((p.to_local() if fsdp.is_sharded(p) else p).numel() for p in trainer.model.parameters())
    return {"losses": losses, "params": params, "local_numel": local,
            "weights": trainer.balancer.task_weights()}


def _worker(rank: int, world_size: int, port: int, overrides: list[str], out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = _train(overrides, rank, world_size)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("balancer", ["uncertainty", "rlw", "mgda", "pcgrad@representation", "nash_mtl@representation"])
def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(micro_data: Path, tmp_path: Path, balancer: str) -> None:
    # gradient balancers on the representation balance the global Gram matrix (rows are per sample);
    # on the parameters they balance the all-reduced per-task gradients; rlw and pcgrad draw random numbers
    name, _, on = balancer.partition("@")
    overrides = micro_overrides(micro_data, tmp_path / "run") + [
        f"balancer.name={name}", f"balancer.on={on or 'params'}", "train.device=cpu", "train.monitor_every=0"]
    single = _train(overrides + ["train.overwrite=true"], 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), overrides + ["train.overwrite=true"], str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in ranks:  # both ranks report the global losses and hold the same weights as one process
        for mine, theirs in zip(result["losses"], single["losses"]):
            assert mine.keys() == theirs.keys()
            assert all(abs(mine[k] - theirs[k]) < 1e-4 * max(1.0, abs(theirs[k])) for k in mine), (mine, theirs)
        worst = max((result["params"][k] - single["params"][k]).abs().max().item() for k in single["params"])
        # on the representation the ranks balance a Cholesky factor of the global Gram matrix (1e-7 ridge), and
        # Nash-MTL's weights at the paper's scale (hundreds) carry that difference into the update: 1.2e-4 seen
        tolerance = 1e-3 if on == "representation" else 1e-4
        assert worst < tolerance
        assert all(abs(result["weights"][t] - single["weights"][t]) < tolerance * max(1.0, abs(single["weights"][t]))
                   for t in single["weights"]), (result["weights"], single["weights"])
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


def _fsdp_worker(rank: int, world_size: int, port: int, overrides: list[str], out_dir: str) -> None:
    """Train sharded, save, take one more step; resume the checkpoint and take the same step again."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    keep: list = []
    result = _train(overrides, rank, world_size, keep)
    trainer = keep[0]
    trainer.save()  # a collective: every rank gathers, rank 0 writes
    batch = _global_batches(trainer)[0]
    rows = range(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    after = []
    for _ in range(2):
        trainer.train_step(batch.subset(rows))
        after.append({k: fsdp.full(v.detach()).clone() for k, v in trainer.model.named_parameters()})
        trainer.resume("latest")
    result["continued"], result["resumed"] = after
    result["skips_absent_modalities"] = trainer.model.skip_absent_modalities
    uneven = batch.subset(rows)
    if rank == 1:  # a task with rows on rank 0 only: sharded blocks would wait for ever, so the run stops
        uneven.targets.pop("summarization")
    try:
        trainer.train_step(uneven)
        result["uneven_error"] = ""
    except MMTLError as exc:
        result["uneven_error"] = str(exc)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_fsdp_on_two_gloo_ranks_matches_one_process_and_resumes_exactly(micro_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    overrides = micro_overrides(micro_data, tmp_path / "run") + [
        "balancer.name=uncertainty", "train.device=cpu", "train.monitor_every=0", "train.overwrite=true"]
    single = _train(overrides, 0, 1)
    mp.spawn(_fsdp_worker, args=(2, _free_port(), overrides + ["train.fsdp=true"], str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in ranks:
        for mine, theirs in zip(result["losses"], single["losses"]):
            assert mine.keys() == theirs.keys()
            assert all(abs(mine[k] - theirs[k]) < 1e-4 * max(1.0, abs(theirs[k])) for k in mine), (mine, theirs)
        assert result["params"].keys() == single["params"].keys()
        worst = max((result["params"][k] - single["params"][k]).abs().max().item() for k in single["params"])
        assert worst < 1e-4
        assert all(abs(result["weights"][t] - single["weights"][t]) < 1e-4 for t in single["weights"])
        assert result["local_numel"] < 0.6 * single["local_numel"]  # each rank holds about half the weights
        # resuming the sharded checkpoint restores weights and optimiser exactly: the same step lands bitwise
        assert all(torch.equal(result["continued"][k], result["resumed"][k]) for k in result["continued"])
        assert "summarization" in result["uneven_error"] and "train.fsdp=false" in result["uneven_error"]
        # a rank whose rows carry no image must still run the sharded image encoder with the others
        assert result["skips_absent_modalities"] is False
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000003"
    saved = load_file(str(checkpoint / "model.safetensors"))  # whole tensors, the usual names
    assert all(torch.equal(saved[k], ranks[0]["params"][k]) for k in single["params"])
    optimizer = torch.load(checkpoint / "train_state.pt", weights_only=True)["optimizer"]
    # whole moments, not one rank's shard: at least as many numbers as the model has (plus the balancer's)
    assert sum(s["exp_avg"].numel() for s in optimizer["state"].values()) >= sum(
        p.numel() for p in single["params"].values())


def test_torchrun_fsdp_resumes_a_checkpoint_and_saves_one_a_plain_process_loads(micro_data: Path, tmp_path: Path) -> None:
    from mmtl.cli import main
    from mmtl.inference import Predictor

    run = tmp_path / "run"
    args = [*micro_overrides(micro_data, run, steps=2), "train.device=cpu", "train.monitor_every=0"]
    assert main(["train", *args]) == 0  # the first steps in one process (the checkpoint format is the same)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mmtl",
               "train", "--resume", "latest", *args, "train.steps=3", "train.fsdp=true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "checkpoints" / "LATEST").read_text() == "step-00000003"
    state = torch.load(run / "checkpoints" / "step-00000003" / "train_state.pt", weights_only=True)
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {3.0}  # AdamW continued, not restarted
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    predictor = Predictor.from_pretrained(run, device="cpu")  # a plain process, no FSDP
    result = predictor.predict(text="anna drew a red circle near the top .", tasks=["summarization"])
    assert isinstance(result.summary, str)


def test_fsdp_with_a_gradient_balancer_is_a_one_line_config_error(micro_data: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from mmtl.cli import main

    args = [*micro_overrides(micro_data, tmp_path / "run"), "train.fsdp=true", "balancer.name=pcgrad"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "balancer.name=pcgrad" in err and "train.fsdp=false" in err


def test_db_mtl_on_the_representation_is_refused_under_data_parallelism(micro_data: Path, tmp_path: Path) -> None:
    # its running average is of gradient vectors, and each rank's representation rows are other samples
    overrides = [*micro_overrides(micro_data, tmp_path / "run"), "train.device=cpu", "balancer.name=db_mtl"]
    two_ranks = DistContext(rank=0, world_size=2)
    trainer = Trainer(resolve_config({}, overrides + ["balancer.on=representation"]))
    with pytest.raises(ConfigError, match="balancer.on=params"):
        balanced_backward(trainer.model, trainer.balancer, trainer.scaler, two_ranks, "db_mtl")
    trainer = Trainer(resolve_config({}, overrides + ["balancer.on=params", "train.overwrite=true"]))
    assert balanced_backward(trainer.model, trainer.balancer, trainer.scaler, two_ranks, "db_mtl").reduce_gram is not None
