"""SLERP and the balance point on tiny tensors; parity with mergekit; mergekit merges of every method."""

import math

import pytest
import torch
from mergekit.merge_methods.slerp import slerp as mergekit_slerp

from featureflow_dagster.merge import SlerpPlan, balance_point, slerp


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def test_slerp_endpoints_return_the_parents():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    assert torch.allclose(slerp(0.0, a, b)[0], a, atol=1e-6)
    assert torch.allclose(slerp(1.0, a, b)[0], b, atol=1e-6)


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for t in (0.25, 0.5, 0.8):
        out, linear = slerp(t, e1, e2)
        assert not linear
        assert torch.allclose(out, torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)]), atol=1e-6)
        assert torch.linalg.vector_norm(out) == pytest.approx(1.0, abs=1e-6)


def test_nearly_parallel_tensors_fall_back_to_linear():
    a = torch.ones(16)
    b = a * 2 + 1e-4 * torch.arange(16.0)
    out, linear = slerp(0.3, a, b)
    assert linear
    assert torch.allclose(out, 0.7 * a + 0.3 * b, atol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (16, 8), (3, 5, 4)])
@pytest.mark.parametrize("t", [0.0, 0.02, 0.37, 0.58, 1.0])
def test_slerp_equals_mergekit(shape, t):
    g = torch.Generator().manual_seed(hash((shape, t)) % 1000)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ref = mergekit_slerp(torch.tensor([t]), a[None], b[None])[0]
    assert _rel(slerp(t, a, b)[0], ref) < 1e-6


def test_slerp_plan_loads_merges_in_place_equal_to_mergekit():
    g = torch.Generator().manual_seed(0)
    m0, m1 = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
    with torch.no_grad():
        m1.weight.copy_(m0.weight * 3 + 1e-5 * torch.randn(5, 6, generator=g))  # nearly parallel: linear
    plan = SlerpPlan({k: v.clone() for k, v in m0.state_dict().items()}, {k: v.clone() for k, v in m1.state_dict().items()})
    assert plan.linear_fallbacks == ["weight"]
    target = torch.nn.Linear(6, 5)
    for t in (0.1, 0.5, 0.9):
        plan.load_into(target, t)
        for name, tensor in target.state_dict().items():
            ref = mergekit_slerp(torch.tensor([t]), m0.state_dict()[name][None], m1.state_dict()[name][None])[0]
            assert _rel(tensor, ref) < 1e-6, name


def test_balance_point_between_grid_points():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    a = [0.9, 0.8, 0.6, 0.4, 0.3]  # falls as t moves towards the second parent
    b = [0.2, 0.4, 0.5, 0.7, 0.8]
    bp = balance_point(ts, a, b)
    # d = 0.1 at t=0.5 and -0.3 at t=0.75: zero at 0.5 + 0.25 * 0.1/0.4
    assert bp.crossed and bp.t == pytest.approx(0.5625)
    assert bp.accuracy_a == pytest.approx(bp.accuracy_b)


def test_balance_point_touching_counts_as_crossing():
    bp = balance_point([0.0, 0.5, 1.0], [0.5, 0.6, 0.7], [0.4, 0.6, 0.65])
    assert bp.crossed and bp.t == 0.5


def test_balance_point_without_crossing_is_flagged():
    bp = balance_point([0.0, 0.5, 1.0], [0.9, 0.8, 0.75], [0.1, 0.5, 0.7])
    assert not bp.crossed and bp.t == 1.0
    assert "NO CROSSING" in bp.note


def test_balance_point_picks_the_most_accurate_of_several_crossings():
    ts = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    a = [0.5, 0.3, 0.5, 0.7, 0.6, 0.5]
    b = [0.4, 0.4, 0.4, 0.6, 0.7, 0.8]
    bp = balance_point(ts, a, b)  # crossings near 0.1 (acc ~0.4), 0.3 (~0.4) and 0.7 (~0.65)
    assert bp.crossed and bp.t == pytest.approx(0.7)


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight  # one tensor, two state-dict names


def test_slerp_plan_loads_into_a_model_with_tied_weights():
    torch.manual_seed(0)
    a, b, target = _Tied(), _Tied(), _Tied()
    assert set(a.state_dict()) == {"embed.weight", "head.weight"} and len(dict(a.named_parameters())) == 1
    plan = SlerpPlan({k: v.clone() for k, v in a.state_dict().items()}, {k: v.clone() for k, v in b.state_dict().items()})
    plan.load_into(target, 0.4)
    ref = mergekit_slerp(torch.tensor([0.4]), a.embed.weight.detach()[None], b.embed.weight.detach()[None])[0]
    assert _rel(target.embed.weight.detach(), ref) < 1e-6 and target.head.weight is target.embed.weight
