"""The shortcuts that keep gradient balancing on the representation cheap compute what the long way does.

``finite_rows`` replaces two ``isfinite`` passes, ``sanitize`` and ``kept_unless`` skip their copies when
nothing is bad, and MoCo and ExcessMTL update their (T, D) state in place when every task is present.
"""
import pytest
import torch

import mmtl.components  # noqa: F401
from mmtl.balancing.backward import finite_rows, sanitize
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS


def test_finite_rows_flags_nan_and_infinities_but_not_huge_finite_entries() -> None:
    big = torch.finfo(torch.float32).max
    grads = torch.tensor([[1.0, 2.0, 3.0], [big, big, -big], [0.0, float("nan"), 0.0],
                          [float("inf"), 1.0, 0.0], [float("-inf"), float("inf"), 0.0]])
    # a plain row sum would overflow on row 1 (3.4e38 + 3.4e38) and call it non-finite
    assert finite_rows(grads).tolist() == [True, True, False, False, False]
    assert torch.equal(finite_rows(grads), torch.isfinite(grads).all(dim=1))


def test_sanitize_zeroes_bad_rows_and_passes_clean_ones_through_without_a_copy() -> None:
    clean = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert sanitize(clean) is clean
    dirty = torch.tensor([[1.0, float("inf")], [0.5, 0.0]])
    assert torch.equal(sanitize(dirty), torch.tensor([[0.0, 0.0], [0.5, 0.0]]))


def _steps(tasks: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    steps = []
    for _ in range(4):
        g = torch.randn(tasks, 64)
        g[:, ::3] = 0.0  # representation gradients are mostly exact zeros (ExcessMTL divides by their root)
        steps.append(g)
    return steps


@pytest.mark.parametrize("name", ["moco", "excess_mtl"])
def test_vector_state_in_place_update_matches_the_row_subset_update(name: str) -> None:
    # every task in order takes the in-place path; the same tasks listed in another order take the
    # gather/scatter path: a permutation of tasks must permute nothing but the rows
    order = [2, 0, 1]
    in_place = BALANCERS.get(name)(["a", "b", "c"], BalancerConfig(name=name))
    subset = BALANCERS.get(name)(["a", "b", "c"], BalancerConfig(name=name))
    for g in _steps(3):
        losses = torch.tensor([1.0, 2.0, 3.0])
        expected = in_place.update(g, losses, [0, 1, 2])
        got = subset.update(g[order], losses[order], order)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(subset.weights, in_place.weights, rtol=1e-5, atol=1e-7)
    for name_, buffer in in_place.named_buffers():
        torch.testing.assert_close(dict(subset.named_buffers())[name_], buffer, rtol=1e-5, atol=1e-7)


def test_excess_mtl_excess_of_a_zero_entry_is_zero_not_nan() -> None:
    balancer = BALANCERS.get("excess_mtl")(["a", "b"], BalancerConfig(name="excess_mtl"))
    g = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 1.0]])
    combined = balancer.update(g, torch.ones(2), [0, 1])
    # first update: excess_t = sum g^2 / sqrt(g^2) = sum |g| = (7, 1); weights softmax(log 1/2 + excess)
    w = torch.softmax(torch.log(torch.tensor([0.5, 0.5])) + torch.tensor([7.0, 1.0]), dim=0)
    torch.testing.assert_close(combined, w @ g)


def test_kept_unless_still_restores_the_state_after_a_non_finite_step_on_the_fast_path() -> None:
    balancer = BALANCERS.get("moco")(["a", "b"], BalancerConfig(name="moco"))
    balancer.update(torch.ones(2, 4), torch.ones(2), [0, 1])
    before = balancer.tracked.clone()
    with balancer.kept_unless(torch.tensor(False)):
        balancer.update(torch.full((2, 4), 5.0), torch.ones(2), [0, 1])
    assert torch.equal(balancer.tracked, before)
    with balancer.kept_unless(torch.tensor(True)):
        balancer.update(torch.full((2, 4), 5.0), torch.ones(2), [0, 1])
    assert not torch.equal(balancer.tracked, before)
