import os
import signal

import pytest
import torch
from torch import nn

from mmtl.training.ema import ModelEMA
from mmtl.training.signals import GracefulStop


def test_first_signal_sets_flag_second_exits() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored


def test_ema_tracks_weights_and_applies_temporarily() -> None:
    model = nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.5)
    original = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(50):
        ema.update(model)
    averaged = ema.shadow["weight"]
    assert torch.allclose(averaged, model.weight, atol=1e-4)  # converged to the new weights
    with torch.no_grad():
        model.weight.copy_(original)
    with ema.applied_to(model):
        assert torch.allclose(model.weight, averaged)
    assert torch.equal(model.weight, original)  # restored afterwards
    restored = ModelEMA(nn.Linear(2, 1), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.updates) == 50
