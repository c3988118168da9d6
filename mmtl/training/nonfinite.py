"""Skipping steps whose loss or gradient is not finite, and stopping a run that keeps producing them."""
from __future__ import annotations

import logging

import torch

from mmtl.errors import MMTLError

log = logging.getLogger(__name__)


class NonFiniteGuard:
    """Decides once per optimiser step whether the update may be applied (one host sync per step).

    A NaN or infinite task loss, or gradient norm, skips the update and is counted; ``limit``
    skips in a row raise an error naming the tasks whose loss went bad. Under fp16 an infinite
    gradient with finite losses is the gradient scaler's business (it lowers the scale and skips
    the step itself), so it is not counted here.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0
        self.streak = 0

    def allows(self, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor, step: int,
               scaler_handles_inf: bool = False) -> bool:
        """True when the update of ``step`` may be applied; counts (and maybe stops on) a bad one."""
        flags = torch.cat([torch.isfinite(torch.stack([v.detach().float() for v in losses.values()])),
                           torch.isfinite(grad_norm.detach().float()).reshape(1)]).tolist()
        bad_tasks = [task for task, ok in zip(losses, flags[:-1]) if not ok]
        bad_grad = not flags[-1] and not scaler_handles_inf
        if not bad_tasks and not bad_grad:
            self.streak = 0
            return True
        self.skipped += 1
        self.streak += 1
        what = f"loss of {', '.join(bad_tasks)}" if bad_tasks else "gradient norm"
        log.warning("step %d: non-finite %s; update skipped (%d in a row, %d in all)", step + 1, what,
                    self.streak, self.skipped)
        if self.streak >= self.limit:
            raise MMTLError(
                f"{self.streak} steps in a row had a non-finite {what} (last at step {step + 1}); "
                "try a lower train.lr, train.precision=fp32 or bf16, or check that task's data")
        return False

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "streak": self.streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped, self.streak = int(state["skipped"]), int(state["streak"])
