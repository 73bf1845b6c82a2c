"""Tiny random models and datasets shared by the tests: offline, CPU, seconds each."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)


class TinyTextDataset(torch.utils.data.Dataset):
    """Random token sequences whose label is a simple function of the first token; `labels` optional."""

    def __init__(self, n: int = 256, seq_len: int = 12, vocab: int = 100, num_labels: int = 2, labels: bool = True):
        g = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(5, vocab, (n, seq_len), generator=g)
        self.labels = self.input_ids[:, 0] % num_labels
        self.with_labels = labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i])}
        if self.with_labels:
            item["labels"] = self.labels[i]
        return item


class TinyImageDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 256, size: int = 16, num_labels: int = 3):
        g = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, num_labels, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


def tiny_bert(num_labels: int = 2, dropout: float = 0.1, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


def tiny_timm(num_labels: int = 3, seed: int = 0) -> TimmWrapperForImageClassification:
    torch.manual_seed(seed)
    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=num_labels))


@pytest.fixture
def text_data() -> TinyTextDataset:
    return TinyTextDataset()


@pytest.fixture
def image_data() -> TinyImageDataset:
    return TinyImageDataset()


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def bench_dirs(tmp_path) -> list[str]:
    """`python -m tasks.bench` options that keep a test's runs and results under `tmp_path`."""
    return ["--results_dir", str(tmp_path / "results"), "--runs_dir", str(tmp_path / "runs")]
