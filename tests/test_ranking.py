"""Ranking unlabeled data: the label-free scores, score_dataset / select_for_labelling, and the active loop."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from torch import nn
from torch.testing import assert_close
from transformers import PretrainedConfig, Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_margin import (
    RANKING_CRITERIA,
    MarginTrainer,
    MarginTrainingArguments,
    breaking_ties_scores,
    entropy_scores,
    least_confidence_scores,
    minimal_margin_scores,
    score_dataset,
    select_for_labelling,
)
from tests.conftest import TinyImageDataset, TinyTextDataset, tiny_bert, tiny_timm

# ---------------------------------------------------------------------------------------------- pure scores


def _naive_probability_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    least, ties = [], []
    for row in logits.double():
        p = sorted((row.exp() / row.exp().sum()).tolist(), reverse=True)
        least.append(1 - p[0])
        ties.append(p[0] - p[1])
    return torch.tensor(least), torch.tensor(ties)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_least_confidence_and_breaking_ties_against_a_loop(dtype, classes):
    logits = torch.randn(16, classes, generator=torch.Generator().manual_seed(classes)) * 3
    least, ties = _naive_probability_scores(logits.to(dtype))
    tol = dict(atol=1e-6, rtol=1e-5)
    assert_close(least_confidence_scores(logits.to(dtype)), least.float(), **tol)
    assert_close(breaking_ties_scores(logits.to(dtype)), ties.float(), **tol)
    assert least_confidence_scores(logits).dtype == breaking_ties_scores(logits).dtype == torch.float32


def test_probability_scores_edge_cases():
    tie = torch.tensor([[1.0, 1.0, -5.0]])
    assert breaking_ties_scores(tie).item() == 0.0
    assert_close(least_confidence_scores(torch.zeros(1, 4)), torch.tensor([0.75]))  # uniform: 1 - 1/C
    confident = torch.tensor([[40.0, 0.0]])
    assert breaking_ties_scores(confident).item() == pytest.approx(1.0)
    assert least_confidence_scores(confident).item() == pytest.approx(0.0, abs=1e-7)
    for bad in (torch.zeros(3, 1), torch.zeros(3)):
        with pytest.raises(ValueError, match="C >= 2"):
            breaking_ties_scores(bad)
        with pytest.raises(ValueError, match="C >= 2"):
            least_confidence_scores(bad)


def test_two_class_criteria_rank_alike():
    """With two classes every model-based criterion is monotone in the logit gap: one ranking."""
    logits = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    ascending = minimal_margin_scores(logits, weight).argsort()
    assert torch.equal(breaking_ties_scores(logits).argsort(), ascending)
    assert torch.equal(least_confidence_scores(logits).argsort(descending=True), ascending)
    assert torch.equal(entropy_scores(logits.double()).argsort(descending=True), ascending)


# ---------------------------------------------------------------------------------------------- score_dataset


def _trainer(model: nn.Module, tmp_path, trainer_cls=Trainer, **kwargs) -> Trainer:
    args_cls = MarginTrainingArguments if trainer_cls is MarginTrainer else TrainingArguments
    args = args_cls(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=kwargs.pop("per_device_eval_batch_size", 7),  # 30 = 4 x 7 + 2: a short batch
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **kwargs,
    )
    return trainer_cls(model=model, args=args)


def _reference_logits(model: nn.Module, dataset, keys: tuple[str, ...]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        batch = {key: torch.stack([dataset[i][key] for i in range(len(dataset))]) for key in keys}
        return model(**batch).logits


@pytest.mark.parametrize("num_labels", [2, 4])
def test_mms_scores_equal_minimal_margin_scores_of_a_plain_forward(tmp_path, num_labels):
    model = tiny_bert(num_labels=num_labels)
    data = TinyTextDataset(n=30, labels=False)
    ranked = score_dataset(_trainer(model, tmp_path), data, criterion="mms")
    expected = minimal_margin_scores(
        _reference_logits(model, data, ("input_ids", "attention_mask")), model.classifier.weight
    )
    assert ranked.criterion == "mms" and ranked.scores.shape == (30,) and ranked.indices.dtype == torch.long
    assert_close(ranked.scores, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(ranked.indices, torch.sort(ranked.scores, stable=True).indices)  # smallest margin first
    assert sorted(ranked.indices.tolist()) == list(range(30))
    assert ranked.scores[ranked.indices].diff().min() >= 0


@pytest.mark.parametrize(
    "criterion, score_fn, largest_first",
    [
        ("entropy", entropy_scores, True),
        ("least_confidence", least_confidence_scores, True),
        ("breaking_ties", breaking_ties_scores, False),
    ],
)
def test_probability_criteria_scores_and_order(tmp_path, criterion, score_fn, largest_first):
    model = tiny_bert(num_labels=3)
    data = TinyTextDataset(n=30, labels=False)
    ranked = score_dataset(_trainer(model, tmp_path), data, criterion=criterion)
    expected = score_fn(_reference_logits(model, data, ("input_ids", "attention_mask")))
    assert_close(ranked.scores, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(ranked.indices, torch.sort(expected, descending=largest_first, stable=True).indices)
    chosen = select_for_labelling(_trainer(model, tmp_path), data, 5, criterion=criterion)
    assert chosen.dtype == torch.long and torch.equal(chosen, ranked.indices[:5])


def test_timm_model_mms_reads_get_classifier_weight(tmp_path):
    model = tiny_timm(num_labels=3)
    data = TinyImageDataset(n=30, size=16)
    ranked = score_dataset(_trainer(model, tmp_path), data, criterion="mms")
    logits = _reference_logits(model, data, ("pixel_values",))
    assert_close(
        ranked.scores, minimal_margin_scores(logits, model.timm_model.get_classifier().weight), atol=1e-4, rtol=1e-4
    )


class _BadLabels(TinyTextDataset):
    """Every sample carries label keys that would break a forward pass if the model saw them."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, "labels": torch.tensor([999, 999]), "label": "not a tensor", "label_ids": torch.tensor(-7)}


def test_labels_are_stripped_before_the_loader(tmp_path):
    model = tiny_bert(num_labels=3)
    trainer = _trainer(model, tmp_path)
    unlabeled = score_dataset(trainer, TinyTextDataset(n=30, labels=False), criterion="mms").scores
    labelled = score_dataset(trainer, TinyTextDataset(n=30, labels=True), criterion="mms").scores
    broken = score_dataset(trainer, _BadLabels(n=30), criterion="mms").scores
    assert torch.equal(unlabeled, labelled) and torch.equal(unlabeled, broken)
    # a datasets.Dataset keeps its type (so the Trainer drops unused columns) and loses its label column
    rows = TinyTextDataset(n=30, labels=True)
    columns = {"input_ids": rows.input_ids.tolist(), "attention_mask": [[1] * 12] * 30}
    with_label = Dataset.from_dict({**columns, "label": [5] * 30, "text": ["x"] * 30}).with_format("torch")
    assert torch.equal(score_dataset(trainer, with_label, criterion="mms").scores, unlabeled)


def test_trainer_label_names_are_stripped_too(tmp_path):
    class Tagged(TinyTextDataset):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "target": torch.tensor([1, 2, 3])}

    model = tiny_bert(num_labels=3)
    trainer = _trainer(model, tmp_path, label_names=["target"])
    assert torch.equal(
        score_dataset(trainer, Tagged(n=20, labels=False)).scores,
        score_dataset(trainer, TinyTextDataset(n=20, labels=False)).scores,
    )


def test_random_is_seeded_and_runs_no_forward(tmp_path):
    model = tiny_bert()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    trainer = _trainer(model, tmp_path, seed=3)
    data = TinyTextDataset(n=40, labels=False)
    first = select_for_labelling(trainer, data, 10, criterion="random", seed=5)
    assert torch.equal(first, select_for_labelling(trainer, data, 10, criterion="random", seed=5))
    assert not torch.equal(first, select_for_labelling(trainer, data, 10, criterion="random", seed=6))
    assert torch.equal(  # seed=None is the trainer's seed
        score_dataset(trainer, data, criterion="random").indices,
        score_dataset(trainer, data, "random", seed=3).indices,
    )
    assert len(set(first.tolist())) == 10 and max(first.tolist()) < 40
    assert not calls


def test_margin_trainer_scores_like_trainer(tmp_path):
    model = tiny_bert(num_labels=3)
    data = TinyTextDataset(n=20, labels=True)
    plain = score_dataset(_trainer(model, tmp_path), data).scores
    margin = score_dataset(_trainer(model, tmp_path, trainer_cls=MarginTrainer, selection="mms"), data).scores
    assert torch.equal(plain, margin)


def test_mms_hook_is_removed_after_scoring(tmp_path):
    model = tiny_bert(num_labels=3)
    score_dataset(_trainer(model, tmp_path), TinyTextDataset(n=10, labels=False))
    assert not model.classifier._forward_hooks


# ---------------------------------------------------------------------------------------------- bad input


class _Config(PretrainedConfig):
    model_type = "ranking-test"


class _OddModel(nn.Module):
    """A classifier without an nn.Linear head whose logits have the shape `[B, *shape_tail]`."""

    def __init__(self, shape_tail: tuple[int, ...], num_labels: int = 3):
        super().__init__()
        self.config = _Config(num_labels=num_labels)
        self.scale = nn.Parameter(torch.ones(()))
        self.shape_tail = shape_tail

    def forward(self, input_ids, attention_mask=None):
        width = int(torch.tensor(self.shape_tail).prod())
        logits = input_ids.float()[:, :width] * self.scale
        return SequenceClassifierOutput(logits=logits.reshape(len(logits), *self.shape_tail))


def test_bad_input_errors_name_the_problem(tmp_path):
    trainer = _trainer(tiny_bert(num_labels=3), tmp_path)
    data = TinyTextDataset(n=10, labels=False)
    with pytest.raises(ValueError, match="empty"):
        score_dataset(trainer, TinyTextDataset(n=0))
    with pytest.raises(ValueError, match=r"n must be in \[1, 10\]"):
        select_for_labelling(trainer, data, 11)
    with pytest.raises(ValueError, match=r"n must be in \[1, 10\]"):
        select_for_labelling(trainer, data, 0)
    with pytest.raises(ValueError, match="criterion='margin'"):
        score_dataset(trainer, data, criterion="margin")
    with pytest.raises(ValueError, match="criterion='margin'"):
        select_for_labelling(trainer, data, 2, criterion="margin")
    with pytest.raises(ValueError, match="regression"):
        score_dataset(_trainer(tiny_bert(num_labels=1), tmp_path), data, criterion="entropy")
    regression = tiny_bert(num_labels=2)
    regression.config.problem_type = "regression"
    with pytest.raises(ValueError, match="regression"):
        score_dataset(_trainer(regression, tmp_path), data)
    with pytest.raises(ValueError, match="last linear layer"):
        score_dataset(_trainer(_OddModel((3,)), tmp_path), data, criterion="mms")
    # without a linear head, the probability criteria still work
    assert score_dataset(_trainer(_OddModel((3,)), tmp_path), data, criterion="entropy").scores.shape == (10,)
    with pytest.raises(ValueError, match=r"\[N, C >= 2\]"):
        score_dataset(_trainer(_OddModel((2, 3)), tmp_path), data, criterion="entropy")
    with pytest.raises(ValueError, match=r"\[N, C >= 2\]"):
        score_dataset(_trainer(_OddModel((1,), num_labels=3), tmp_path), data, criterion="least_confidence")
    with pytest.raises(ValueError, match="length"):
        score_dataset(trainer, iter([{"input_ids": torch.ones(3, dtype=torch.long)}]))
    with pytest.raises(ValueError, match="mappings"):
        score_dataset(trainer, [(torch.ones(3, dtype=torch.long), 1)] * 4, criterion="entropy")
    assert set(RANKING_CRITERIA) == {"mms", "breaking_ties", "least_confidence", "entropy", "random"}


# ---------------------------------------------------------------------------------------------- active loop


def _active_argv(tmp_path, *extra: str) -> list[str]:
    return [
        "--recipe", "image", "--dataset_name", "digits", "--max_train_samples", "120", "--max_eval_samples", "60",
        "--model_name_or_path", "cifar_cnn", "--model_kwargs", '{"widths": [4, 8], "hidden": 16}',
        "--initial_labels", "10", "--query_size", "10", "--rounds", "2", "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64", "--output_dir", str(tmp_path),
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("round_start", ["initial", "continue"])
def test_active_loop_end_to_end(tmp_path, round_start):
    from tasks.active import main

    record = main(_active_argv(tmp_path, "--criterion", "mms", "--round_start", round_start))
    written = json.loads((tmp_path / "active.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert written["labels"] == [10, 20, 30] and len(written["accuracy"]) == 3
    assert all(0.0 <= a <= 1.0 for a in written["accuracy"])
    assert written["round_start"] == round_start and written["pool_size"] == 120 and written["eval_size"] == 60
    chosen = [i for batch in written["acquired"] for i in batch]
    assert [len(batch) for batch in written["acquired"]] == [10, 10]
    assert len(set(chosen)) == 20 and not set(chosen) & set(written["initial"]) and max(chosen) < 120
    assert (tmp_path / "active.png").stat().st_size > 0


def test_active_loop_same_seed_same_initial_set_across_criteria(tmp_path):
    from tasks.active import main

    mms = main(_active_argv(tmp_path / "a", "--criterion", "mms", "--rounds", "1", "--seed", "4"))
    rnd = main(_active_argv(tmp_path / "b", "--criterion", "random", "--rounds", "1", "--seed", "4"))
    assert mms["initial"] == rnd["initial"]
    assert mms["accuracy"][0] == rnd["accuracy"][0]  # round 0 trains the same model on the same labels
    assert mms["acquired"] != rnd["acquired"]


def test_active_loop_bad_settings(tmp_path):
    from tasks.active import main

    with pytest.raises(ValueError, match="exceeds the pool of 120"):
        main(_active_argv(tmp_path, "--rounds", "20"))
    with pytest.raises(ValueError, match="schedule"):
        main(_active_argv(tmp_path, "--schedule", "resnet_cifar"))
    with pytest.raises(ValueError, match="recipe"):
        main(["--recipe", "audio"])
    with pytest.raises(ValueError, match="query_size"):
        main(_active_argv(tmp_path, "--query_size", "0"))


def test_benchmark_summary_helpers():
    from tasks.active_bench import area_under_curve, labels_to_reach

    labels = [100, 200, 300]
    assert area_under_curve(labels, [0.5, 0.7, 0.7]) == pytest.approx((0.6 + 0.7) / 2)
    assert labels_to_reach(labels, [0.5, 0.7, 0.8], 0.6) == pytest.approx(150)
    assert labels_to_reach(labels, [0.5, 0.7, 0.8], 0.4) == 100
    assert labels_to_reach(labels, [0.5, 0.7, 0.8], 0.9) is None


def test_cifar_cnn_counts_and_head():
    import timm

    import tasks.cifar_models  # noqa: F401  (registers cifar_cnn)
    from hf_margin import find_classifier

    model = timm.create_model("cifar_cnn", num_classes=10)
    # convs 3*32*9+32 and 32*64*9+64, hidden 64*16*128+128, classifier 128*10+10
    assert sum(p.numel() for p in model.parameters()) == 896 + 18_496 + 131_200 + 1_290
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    assert find_classifier(model)[0] == "fc" and model.forward_head(
        model.forward_features(torch.zeros(1, 3, 8, 8)), pre_logits=True
    ).shape == (1, 128)


def test_benchmark_summary_pairs_seeds(tmp_path, monkeypatch):
    import tasks.active_bench as bench

    monkeypatch.setattr(bench, "RUNS", tmp_path)
    curves = {("random", 0): [0.5, 0.6], ("random", 1): [0.5, 0.7], ("mms", 0): [0.5, 0.8], ("mms", 1): [0.5, 0.8]}
    for (criterion, seed), accuracy in curves.items():
        out = tmp_path / "fmnist" / f"{criterion}_seed{seed}"
        out.mkdir(parents=True)
        record = {"criterion": criterion, "seed": seed, "labels": [100, 200], "accuracy": accuracy}
        (out / "active.json").write_text(json.dumps(record))
    summary = bench.summarize("fmnist")
    mms, random = summary["criteria"]["mms"], summary["criteria"]["random"]
    assert random["mean"] == pytest.approx([0.5, 0.65]) and random["std"][1] == pytest.approx(0.0707, abs=1e-4)
    assert mms["vs_random"]["final_mean"] == pytest.approx(0.15) and mms["vs_random"]["final_std"] == pytest.approx(
        0.0707, abs=1e-4
    )
    assert mms["labels_to_random_final"] == pytest.approx(100 + 100 * 0.15 / 0.3)
    assert "| mms | 2 | 50.0 +- 0.0 | 80.0 +- 0.0 |" in bench.markdown_table(summary)


@pytest.mark.parametrize("round_start", ["initial", "continue"])
def test_round_start_initial_restores_the_initial_weights(tmp_path, monkeypatch, round_start):
    from tasks.active import load_task, parse_args, recipe_named, run_active_learning

    active, image_args, training_args = parse_args(_active_argv(tmp_path, "--round_start", round_start))
    task = load_task(recipe_named("image"), image_args, training_args)
    starts = []
    make_trainer = task.recipe.make_trainer

    def recording(args, training_args, model, data, labelled):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return make_trainer(args, training_args, model, data, labelled)

    monkeypatch.setattr(task.recipe, "make_trainer", recording)
    run_active_learning(active, task, training_args)
    same = [all(torch.equal(start[k], starts[0][k]) for k in start) for start in starts[1:]]
    assert len(starts) == 3 and same == ([True, True] if round_start == "initial" else [False, False])
