"""Shared fixtures: a micro synthetic data set written once per session into a temp dir."""
from __future__ import annotations

import builtins
import importlib.util
import json
import os
import sys
import threading
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from hypothesis import settings

from data_pipelines.pipes import allow_pipes
from data_pipelines.shapes_world import write_shards
import mmtl.components  # noqa: F401  (fills the registries that config validation reads, as the entry points do)

# CI replays the same examples on every run (a landing never hangs on a lucky draw); a developer's run explores
# new ones. Hypothesis also draws strings found in the code under test ("--debug"), so every property must hold
# for them too.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true"):
    settings.load_profile("ci")

MICRO_SIZES = {"train": 96, "val": 16, "test": 16}
TOOLS = Path(__file__).parents[1] / "tools"


def load_tool(name: str) -> Any:
    """``tools/<name>.py`` as a module (tools/ is not a package; registered in sys.modules so that its
    dataclasses resolve their own module)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes-world shards at 32x32 (the micro preset's image size)."""
    path = tmp_path_factory.mktemp("micro_data")
    write_shards(path, MICRO_SIZES, seed=1, difficulty="easy", image_size=32, shard_size=40)
    return path


@pytest.fixture(scope="session")
def micro_run(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro model trained for 2 steps on ``micro_data``, shared by the tests that only read it (servers)."""
    from mmtl.cli import main

    run = tmp_path_factory.mktemp("micro_run") / "run"
    assert main(["train", *micro_overrides(micro_data, run, steps=2)]) == 0
    return run


def micro_overrides(data: Path, out: Path, steps: int = 3) -> list[str]:
    """Config overrides for a seconds-long run of the micro preset on ``data``."""
    return [
        f"data.path={data}", f"output_dir={out}", "model.preset=micro", f"train.steps={steps}",
        "data.batch_size=8", "train.log_every=1", "train.progress=false", "eval.max_samples=16",
        "train.warmup_steps=1", "model.decoder.max_length=48", "eval.generation.max_length=8",
    ]


@pytest.fixture(autouse=True)
def no_pipes_after() -> Iterator[None]:
    """``pipe:`` sources are forbidden again after each test (a config with data.allow_pipe=true allows
    them for the rest of the process)."""
    yield
    allow_pipes(False)


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


# -- HTTP requests against a served model (test_serve, test_finetune) --------------------------------
def multipart(fields: dict[str, str], image: bytes | None = None, files: dict[str, bytes] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for name, data in {**({"image": image} if image is not None else {}), **(files or {})}.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(server, path: str, body: bytes | None = None, content_type: str | None = None,
            method: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_json(server, payload: dict) -> tuple[int, dict]:
    return request(server, "/v1/predict", json.dumps(payload).encode(), "application/json")


@pytest.fixture
def refuse_tar_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """A function that makes every later ``open`` of a ``.tar`` fail with "permission denied"
    (simulated: the tests run as root, which reads any file)."""
    real_open = builtins.open

    def refuse_tars(file, *args, **kwargs):
        if str(file).endswith(".tar"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    return lambda: monkeypatch.setattr(builtins, "open", refuse_tars)
