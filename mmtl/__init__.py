"""mmtl: one PyTorch model that learns several vision-and-language tasks at once.

The Python API mirrors the command line (see :mod:`mmtl.api`)::

    import mmtl

    config = mmtl.load_config("experiment.yaml", {"train.steps": 300})
    run = mmtl.train(config)
    report = mmtl.evaluate(run.run_dir, config=config, baselines=mmtl.baselines(config).path)
    mmtl.Predictor.from_pretrained(run.run_dir).predict(image="scene.png")

Everything but ``__version__`` is imported on first use, so ``import mmtl`` does not import torch.
"""
from __future__ import annotations

from typing import Any

from mmtl.version import __version__

API = ("load_config", "synthesize", "train", "evaluate", "baselines", "finetune", "export")
RESULTS = ("TrainRun", "Evaluation", "BaselinesRun")
__all__ = ["Predictor", "PredictionResult", "MMTLError", *API, *RESULTS, "__version__"]


def __getattr__(name: str) -> Any:
    # imported lazily so that `import mmtl` and `mmtl --help` do not pay for importing torch
    if name in ("Predictor", "PredictionResult"):
        from mmtl import inference

        return getattr(inference, name)
    if name in API:
        from mmtl import api

        return getattr(api, name)
    if name in RESULTS:
        from mmtl import results

        return getattr(results, name)
    if name == "MMTLError":
        from mmtl.errors import MMTLError

        return MMTLError
    raise AttributeError(f"module 'mmtl' has no attribute {name!r}")
