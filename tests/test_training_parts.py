import os
import signal

import pytest

from mmtl.training.signals import GracefulStop


def test_first_signal_sets_flag_second_exits() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored


def test_owner_clipping_keeps_a_task_heads_update_whole_when_another_task_has_a_large_gradient() -> None:
    import torch
    from torch import nn

    from mmtl.training.optim import clip_gradients, clip_groups

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(4, 4)
            self.heads = nn.ModuleDict({"big": nn.Linear(4, 1), "small": nn.Linear(4, 1)})

    def gradients(scope: str) -> tuple:
        torch.manual_seed(0)
        model = TwoHeads()
        features = model.trunk(torch.randn(8, 4))
        (1000 * model.heads["big"](features).sum() + 0.01 * model.heads["small"](features).sum()).backward()
        before = model.heads["small"].weight.grad.clone()
        groups = clip_groups(model, scope)
        norm = clip_gradients(groups, 1.0)
        return before, model.heads["small"].weight.grad, [len(g) for g in groups], norm

    before, after, sizes, owner_norm = gradients("owner")
    assert sizes == [2, 2, 2]  # the trunk, then each head
    assert torch.equal(before, after)  # its own norm is below 1: untouched
    before, after, sizes, global_norm = gradients("global")
    assert sizes == [6] and after.norm() < before.norm() / 100  # shrunk by the other task's gradient
    assert owner_norm == pytest.approx(float(global_norm), rel=1e-5)  # the logged norm is the same total
