import pytest
import torch

from mmtl.flop_count import count_flops
from mmtl.training.flops import mfu, peak_flops


def test_count_flops_of_a_matmul_forward_and_backward() -> None:
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    # backward of a @ b w.r.t. a is one more matmul of the same size
    assert count_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 8 * 16 * 4)


def test_mfu_and_cpu_peak_are_sane() -> None:
    peak, source = peak_flops(torch.device("cpu"), "fp32")
    assert 1e9 < peak < 1e14 and "CPU" in source
    assert mfu(1e9, 0.5, 4e9) == pytest.approx(0.5)
