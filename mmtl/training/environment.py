"""What a run ran on: versions, device and command line, saved as ``environment.json`` beside the run."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("mmtl", "torch", "torchvision", "timm", "open_clip_torch", "webdataset", "numpy", "pillow",
            "safetensors", "torchmetrics", "sacrebleu", "rouge-score")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """Versions of Python and the libraries, the device, the host, the command and the code's commit."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
        "command": sys.argv, "cwd": os.getcwd(), "git_commit": _git_commit(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": str(device), "world_size": world_size, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_count=torch.cuda.device_count())
    return info


def save_environment(run_dir: Path, device: torch.device, world_size: int = 1) -> Path:
    """Write ``environment.json`` into ``run_dir``."""
    path = run_dir / "environment.json"
    path.write_text(json.dumps(environment(device, world_size), indent=2))
    return path
