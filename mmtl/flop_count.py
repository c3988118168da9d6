"""Counting the FLOPs a piece of PyTorch code executes (torch's own per-op formulas)."""
from __future__ import annotations

from typing import Any, Callable

# private module: FlopCounterMode, its public neighbour, hooks every module, which autograd.grad refuses
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class _FlopTotal(TorchDispatchMode):
    """Adds up torch's own FLOP formulas (matmuls, convolutions, attention) as the ops dispatch.

    ``FlopCounterMode`` does the same but also hooks every module to attribute FLOPs, and
    ``torch.autograd.grad`` (the per-task gradients of gradient balancers) refuses those hooks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs that ``fn()`` executes (forward and backward included if ``fn`` runs both)."""
    with _FlopTotal() as counter:
        fn()
    return int(counter.total)
