from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification

from hf_margin import HeadTap, find_classifier, multi_margin_penalty
from tests.conftest import tiny_bert, tiny_timm


def test_bert_head_is_the_classifier():
    model = tiny_bert()
    name, layer = find_classifier(model)
    assert name == "classifier" and layer is model.classifier


def test_timm_head_comes_from_get_classifier():
    model = tiny_timm(num_labels=3)
    name, layer = find_classifier(model)
    assert layer is model.timm_model.get_classifier() and name == "timm_model.fc"
    assert layer.out_features == 3


def test_roberta_head_is_out_proj():
    config = RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, num_labels=4
    )
    model = RobertaForSequenceClassification(config)
    name, layer = find_classifier(model)
    assert name == "classifier.out_proj" and layer.out_features == 4


def test_explicit_name_and_last_linear_fallback():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 3))
            self.config = type("C", (), {"num_labels": 3})()

    net = Net()
    assert find_classifier(net) == ("head.1", net.head[1])
    assert find_classifier(net, "body") == ("body", net.body)
    with pytest.raises(ValueError, match="not a submodule"):
        find_classifier(net, "nope")
    with pytest.raises(ValueError, match="not an nn.Linear"):
        find_classifier(net, "head.0")


def test_no_linear_head_is_a_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match="classifier_name"):
        find_classifier(net)


def test_head_tap_reads_the_head_inside_its_forward_only_when_watching():
    model = tiny_bert(num_labels=3, dropout=0.0).eval()
    tap = HeadTap(model.classifier)
    ids = torch.randint(5, 100, (3, 7))
    model(input_ids=ids)
    assert tap.features is None and tap.weight is None
    labels = torch.tensor([0, 2, 1])
    with tap.watching(labels=labels):
        logits = model(input_ids=ids).logits
    assert tap.features.shape == (3, 32)
    torch.testing.assert_close(model.classifier(tap.features), logits)
    assert torch.equal(tap.weight, model.classifier.weight) and not tap.weight.requires_grad
    assert tap.weight.data_ptr() != model.classifier.weight.data_ptr()  # a copy: sharding engines free theirs
    torch.testing.assert_close(
        tap.penalty, multi_margin_penalty(tap.features, logits, labels, model.classifier.weight)
    )
    tap.penalty.backward()  # the penalty's gradient reaches the head's weight
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    tap.remove()
    with tap.watching():
        model(input_ids=ids)
    assert tap.weight is None
