from __future__ import annotations

import pytest
import torch

from hf_margin import linear_ramp, pool_scores, select_by_score, select_uniform


def test_select_smallest_and_largest_exact_indices():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert select_by_score(scores, 2, largest=False).tolist() == [1, 3]
    assert select_by_score(scores, 2, largest=True).tolist() == [2, 4]
    assert select_by_score(scores, 10, largest=False).tolist() == [0, 1, 2, 3, 4]


def test_ties_go_to_the_earlier_sample():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    assert select_by_score(scores, 2, largest=False).tolist() == [1, 2]
    assert select_by_score(scores, 1, largest=True).tolist() == [0]


def test_uniform_is_seeded_unique_and_sized():
    a = select_uniform(100, 10, torch.Generator().manual_seed(3))
    b = select_uniform(100, 10, torch.Generator().manual_seed(3))
    c = select_uniform(100, 10, torch.Generator().manual_seed(4))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100
    assert a.tolist() == sorted(a.tolist())


def test_keep_must_be_positive_and_criteria_need_their_inputs():
    with pytest.raises(ValueError, match="keep"):
        select_by_score(torch.zeros(3), 0, largest=False)
    with pytest.raises(ValueError, match="weight"):
        pool_scores("mms", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels"):
        pool_scores("loss", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no score"):
        pool_scores("uniform", torch.zeros(2, 3))


def test_linear_ramp():
    assert linear_ramp(1e-5, None, 50, 100) == 1e-5
    assert linear_ramp(1e-5, 1e-3, 0, 100) == 1e-5
    assert linear_ramp(1e-5, 1e-3, 100, 100) == pytest.approx(1e-3)
    assert linear_ramp(0.0, 1.0, 25, 100) == pytest.approx(0.25)
    assert linear_ramp(0.0, 1.0, 200, 100) == 1.0


def test_with_two_classes_mms_and_entropy_choose_the_same_samples_and_with_three_they_need_not():
    # two classes: both scores are monotone in |s1 - s2| (the weight-row distance is one constant for the pool)
    generator = torch.Generator().manual_seed(0)
    logits, weight = torch.randn(64, 2, generator=generator), torch.randn(2, 16, generator=generator)
    by_mms = select_by_score(pool_scores("mms", logits, weight), 32, largest=False)
    by_entropy = select_by_score(pool_scores("entropy", logits), 32, largest=True)
    assert by_mms.tolist() == by_entropy.tolist()
    # three classes: a close top-2 with a far third class has the smaller margin but the lower entropy
    logits, weight = torch.tensor([[2.0, 1.9, -10.0], [0.5, 0.0, 0.0]]), torch.eye(3)
    assert select_by_score(pool_scores("mms", logits, weight), 1, largest=False).tolist() == [0]
    assert select_by_score(pool_scores("entropy", logits), 1, largest=True).tolist() == [1]


def test_float32_entropy_ties_the_tiny_margins_of_a_fresh_head_that_mms_keeps_apart():
    # near-equal logits (a fresh classification head) the two-class entropy is ln 2 - d^2 / 8: margins of 1e-4 and
    # 2e-4 change it by less than a float32 rounding step, so entropy ties them and keeps the earlier sample
    logits, weight = torch.tensor([[2e-4, 0.0], [1e-4, 0.0], [0.5, 0.0]]), torch.eye(2)
    entropy = pool_scores("entropy", logits)
    assert entropy[0] == entropy[1] > entropy[2]
    assert select_by_score(entropy, 1, largest=True).tolist() == [0]
    assert select_by_score(pool_scores("mms", logits, weight), 1, largest=False).tolist() == [1]
