"""The pure math against independent references: a least-norm solve and naive loops."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from hf_margin import entropy_scores, minimal_margin_scores, multi_margin_penalty, per_sample_losses


def _linear_layer(classes: int, dim: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    bias = torch.randn(classes, generator=g, dtype=torch.float64)
    features = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return features, weight, bias


def _distance_to_top2_boundary(phi, weight, bias, logits):
    """Least-norm displacement that puts phi on the boundary between its top-2 classes: ||delta||."""
    distances = []
    for row, x in zip(logits, phi):
        i1, i2 = row.topk(2).indices.tolist()
        a = (weight[i1] - weight[i2])[None, :]  # [1, D]: a @ (x + delta) + (b1 - b2) = 0
        rhs = -(a @ x + bias[i1] - bias[i2])
        # the minimum-norm solution of this underdetermined system is the shortest displacement
        delta = torch.linalg.lstsq(a, rhs[:, None]).solution[:, 0]
        distances.append(delta.norm())
    return torch.stack(distances)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_mms_is_the_distance_to_the_top2_boundary(dtype, classes):
    phi, weight, bias = _linear_layer(classes, dim=7, batch=20)
    logits = phi @ weight.T + bias
    expected = _distance_to_top2_boundary(phi, weight, bias, logits).float()
    got = minimal_margin_scores(logits.to(dtype), weight.to(dtype))
    assert got.dtype == torch.float32 and got.shape == (20,)
    tol = {torch.float64: 1e-5, torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    assert_close(got, expected, rtol=tol, atol=tol)


def test_mms_ties_are_zero_and_the_order_of_tied_classes_does_not_matter():
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    logits = torch.tensor([[2.0, 2.0, -1.0], [0.5, 4.0, 4.0], [1.0, 1.0, 1.0]])
    got = minimal_margin_scores(logits, weight)
    assert_close(got, torch.zeros(3))


def test_mms_identical_weight_rows_give_finite_scores():
    weight = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 5.0, 1.0]])
    got = minimal_margin_scores(logits, weight)
    assert torch.isfinite(got).all()
    assert got[0] > 1e9  # separated only by the bias: no boundary in feature space, ranks as far
    assert got[1] == 0.0
    assert_close(got[2], torch.tensor(4.0 / (2.0**0.5)))  # rows 1 and 2 differ: an ordinary distance


def test_mms_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        minimal_margin_scores(torch.zeros(4, 1), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="rows"):
        minimal_margin_scores(torch.zeros(4, 3), torch.zeros(2, 3))


def _naive_penalty(phi, logits, labels, weight):
    radius_sq = max(float(x @ x) for x in phi)
    terms = []
    for row, y in zip(logits, labels):
        wrong = [(float(row[c]), c) for c in range(len(row)) if c != int(y)]
        m = max(wrong)[1]
        diff = weight[int(y)] - weight[m]
        terms.append(float(diff @ diff) * radius_sq)
    return torch.tensor(sum(terms) / len(terms))


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mmr_penalty_equals_a_naive_loop(classes, dtype):
    phi, weight, bias = _linear_layer(classes, dim=6, batch=12, seed=1)
    logits = phi @ weight.T + bias
    labels = torch.arange(12) % classes
    expected = _naive_penalty(phi, logits, labels, weight).float()
    got = multi_margin_penalty(phi.to(dtype), logits.to(dtype), labels, weight.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert_close(got, expected, rtol=tol, atol=tol)


def test_mmr_penalty_all_correct_all_wrong_and_ignored_rows():
    phi, weight, bias = _linear_layer(4, dim=5, batch=8, seed=2)
    logits = phi @ weight.T + bias
    correct = logits.argmax(1)
    wrong = (correct + 1) % 4
    for labels in (correct, wrong):
        assert_close(multi_margin_penalty(phi, logits, labels, weight), _naive_penalty(phi, logits, labels, weight))
    ignored = correct.clone()
    ignored[:3] = -100
    expected = _naive_penalty(phi[3:], logits[3:], correct[3:], weight)
    assert_close(multi_margin_penalty(phi, logits, ignored, weight), expected)
    assert multi_margin_penalty(phi, logits, torch.full((8,), -100), weight) == 0.0


def test_mmr_penalty_gradient_reaches_weights_and_only_the_largest_feature():
    phi, weight, bias = _linear_layer(3, dim=4, batch=5, seed=3)
    phi, weight = phi.float().requires_grad_(), weight.float().requires_grad_()
    logits = (phi @ weight.T + bias.float()).detach()
    multi_margin_penalty(phi, logits, torch.tensor([0, 1, 2, 0, 1]), weight).backward()
    assert weight.grad.abs().sum() > 0
    largest = phi.detach().norm(dim=1).argmax()
    nonzero_rows = (phi.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert nonzero_rows == [int(largest)]


def test_entropy_and_per_sample_loss_against_loops():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    p = logits.softmax(1)
    assert_close(entropy_scores(logits), torch.stack([-(r * r.log()).sum() for r in p]))
    assert_close(per_sample_losses(logits, labels), torch.stack([-p[i, y].log() for i, y in enumerate(labels)]))
