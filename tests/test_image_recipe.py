"""The image recipe: CIFAR architectures in timm, decoded tensor datasets, step schedules, `python -m tasks.image`.

Offline (conftest sets HF_HUB_OFFLINE); the CIFAR-10 and Fashion-MNIST tests need ../shared/data and skip without it,
except where HF_MARGIN_REQUIRE_SHARED=1 (CI, which checks ../shared out beside the clone): there they fail.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    Trainer,
    default_data_collator,
)

from tasks.cifar_models import CifarBasicBlock  # importing it registers the CIFAR architectures in timm
from tasks.image import (
    SCHEDULE_PRESETS,
    ImageTrainer,
    StepSchedule,
    build_model,
    check_milestones_within_training,
    compute_accuracy,
    main,
    parse_args,
    step_lr_multiplier,
)
from tasks.image_data import (
    DEFAULT_DATA_DIR,
    TensorImageDataset,
    load_cifar10_parquet,
    load_image_splits,
    random_crop_flip,
)

CIFAR_DIR = DEFAULT_DATA_DIR / "cifar10-jpeg"
FASHION_DIR = DEFAULT_DATA_DIR / "fashion-mnist"
SHARED_OPTIONAL = os.environ.get("HF_MARGIN_REQUIRE_SHARED") != "1"
needs_cifar = pytest.mark.skipif(
    SHARED_OPTIONAL and not (CIFAR_DIR / "train.parquet").exists(), reason=f"no CIFAR-10 in {CIFAR_DIR}"
)
needs_fashion = pytest.mark.skipif(
    SHARED_OPTIONAL and not FASHION_DIR.exists(), reason=f"no Fashion-MNIST in {FASHION_DIR}"
)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- architectures ----


def cifar_resnet_param_count(depth: int, num_classes: int = 10) -> int:
    """Independent count for He et al.'s CIFAR ResNet with option-A shortcuts: convs, BN pairs, the classifier."""
    n = (depth - 2) // 6
    count = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    in_chs = 16
    for width in (16, 32, 64):
        for _ in range(n):
            count += 9 * in_chs * width + 9 * width * width + 2 * 2 * width
            in_chs = width
    return count + 64 * num_classes + num_classes


# Published sizes (10 classes): He et al. 2016 table 6 (0.27M ... 1.7M); WRN-28-10 36.5M (Zagoruyko & Komodakis).
PARAM_COUNTS = {
    "cifar_resnet20": 269_722,
    "cifar_resnet32": 464_154,
    "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018,
    "cifar_resnet110": 1_727_962,
    "wide_resnet16_4": 2_748_890,
    "wide_resnet28_2": 1_467_610,
    "wide_resnet28_10": 36_479_194,
    "cifar_resnet18": 11_173_962,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_registered_architectures_have_published_sizes(name):
    model = timm.create_model(name)
    assert model.pretrained_cfg["architecture"] == name
    assert model.num_classes == 10  # from the registered default cfg
    assert num_params(model) == PARAM_COUNTS[name]
    if name.startswith("cifar_resnet") and name != "cifar_resnet18":
        assert num_params(model) == cifar_resnet_param_count(int(name.removeprefix("cifar_resnet")))


def test_wrn_28_10_for_cifar100_and_option_b_resnet44():
    assert num_params(timm.create_model("wide_resnet28_10", num_classes=100)) == 36_479_194 + 640 * 90 + 90
    # The papers' code uses 1x1-conv shortcuts: + (16*32 + 2*32) + (32*64 + 2*64) parameters.
    assert num_params(timm.create_model("cifar_resnet44", shortcut="B")) == 658_586 + 576 + 2176


@pytest.mark.parametrize(
    ("name", "features", "feature_size"),
    [
        ("cifar_resnet20", 64, 8),
        ("cifar_resnet44", 64, 8),
        ("wide_resnet16_4", 256, 8),
        ("wide_resnet28_2", 128, 8),
        ("cifar_resnet18", 512, 4),
    ],
)
def test_forward_on_32x32_and_classifier_protocol(name, features, feature_size):
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map = model.forward_features(x)
        pooled = model.forward_head(feature_map, pre_logits=True)
        logits = model(x)
    assert feature_map.shape == (2, features, feature_size, feature_size)
    assert pooled.shape == (2, features) and model.num_features == features
    assert logits.shape == (2, 7)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (features, 7)
    torch.testing.assert_close(logits, head(pooled))
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert model(x).shape == (2, features)


def test_grayscale_and_8x8_inputs():
    model = timm.create_model("cifar_resnet20", in_chans=1, num_classes=10).eval()
    assert model.stem[0].in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
        assert model.forward_features(torch.randn(3, 1, 28, 28)).shape == (3, 64, 7, 7)


def test_invalid_depth_is_rejected():
    with pytest.raises(ValueError, match="6n\\+2"):
        timm.create_model("cifar_resnet20", depth=21)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_resnet20", pretrained=True)


def test_timm_wrapper_wraps_cifar_resnet20():
    from hf_margin import find_classifier

    config = TimmWrapperConfig(architecture="cifar_resnet20", num_labels=10)
    model = TimmWrapperForImageClassification(config)
    head = model.timm_model.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (64, 10)
    assert find_classifier(model) == ("timm_model.fc", head)
    out = model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]))
    assert out.logits.shape == (4, 10) and out.loss.ndim == 0


def test_build_model_keeps_timm_initialisation():
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", [str(i) for i in range(10)], in_chans=1)
    blocks = [m for m in model.timm_model.modules() if isinstance(m, CifarBasicBlock)]
    assert len(blocks) == 9
    # timm's zero-init of each residual branch's last BN survives (the wrapper's own init sets them to 1) ...
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    # ... and so does He init: std sqrt(2 / fan_out) = sqrt(2 / (9 * 64)) for the last stage's convs (not 0.02).
    weight = blocks[-1].conv1.weight
    assert abs(weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.01
    assert model.config.model_args == {"in_chans": 1} and model.config.id2label[3] == "3"


def test_build_model_from_a_local_checkpoint_gets_a_new_head(tmp_path):
    source = build_model("cifar_resnet20", [str(i) for i in range(10)])
    source.save_pretrained(tmp_path)
    model = build_model(str(tmp_path), ["a", "b", "c"])
    assert model.timm_model.get_classifier().out_features == 3
    torch.testing.assert_close(model.timm_model.stem[0].weight, source.timm_model.stem[0].weight)
    with pytest.raises(ValueError, match="neither a timm architecture"):
        build_model("no_such_architecture", ["a", "b"])


# ---- data ----


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8)).float()  # no zeros, so padding is recognisable
    out = random_crop_flip(images, padding=2, flip=True, generator=generator)
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifted, flipped = 0, 0
    for i in range(len(images)):
        matches = []
        for top in range(5):
            for left in range(5):
                window = padded[i, :, top : top + 8, left : left + 8]
                matches += [(top, left, False)] if torch.equal(out[i], window) else []
                matches += [(top, left, True)] if torch.equal(out[i], window.flip(-1)) else []
        assert matches, f"image {i} is not a (flipped) window of its padded original"
        shifted += all((top, left) != (2, 2) for top, left, _ in matches)
        flipped += all(mirror for _, _, mirror in matches)
    assert shifted >= 8 and 2 <= flipped <= 14  # 24 of 25 offsets move the image; flips are a coin toss


def test_flip_only_keeps_or_mirrors():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4).repeat(32, 1, 1, 1)
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < len(images)


def test_tensor_dataset_items_batches_and_pickling():
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(40) % 5
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    train = TensorImageDataset(images, labels, mean, std, augmentation="crop_flip", crop_padding=3)
    evaluation = TensorImageDataset(images, labels, mean, std)
    item = evaluation[7]
    assert item["labels"] == 2 and item["pixel_values"].dtype == torch.float32
    expected = (images[7].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(item["pixel_values"], expected)
    torch.manual_seed(0)
    first, second = train[7]["pixel_values"], train[7]["pixel_values"]
    assert first.shape == (3, 12, 12) and not torch.equal(first, second)  # augmentation redraws each time

    loader = DataLoader(train, batch_size=16, collate_fn=default_data_collator)
    batches = list(loader)
    assert [len(b["labels"]) for b in batches] == [16, 16, 8]
    assert batches[0]["pixel_values"].shape == (16, 3, 12, 12) and batches[0]["labels"].dtype == torch.long
    torch.testing.assert_close(torch.cat([b["labels"] for b in batches]), labels)

    restored = pickle.loads(pickle.dumps(evaluation))
    torch.testing.assert_close(restored[3]["pixel_values"], evaluation[3]["pixel_values"])
    gray = TensorImageDataset(images[:, :1].contiguous(), labels, (0.5,), (0.25,)).with_channels(3)
    assert gray[0]["pixel_values"].shape == (3, 12, 12)
    torch.testing.assert_close(gray[0]["pixel_values"][0], gray[0]["pixel_values"][2])


@needs_cifar
def test_cifar10_parquet_counts_match_source_md():
    import pyarrow.parquet as pq

    for split, rows, per_class in (("train", 50_000, 5_000), ("test", 10_000, 1_000)):
        labels = pq.read_table(CIFAR_DIR / f"{split}.parquet", columns=["label"]).column("label").to_numpy()
        assert len(labels) == rows
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10


@needs_cifar
def test_cifar10_subset_decodes_to_uint8_tensors():
    images, labels = load_cifar10_parquet(CIFAR_DIR / "train.parquet", count=1000, seed=0)
    assert images.shape == (1000, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.long
    assert len(labels.unique()) == 10  # rows are sorted by label: the subset must be drawn at random
    mean = images.float().div(255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.02, rtol=0)
    again, _ = load_cifar10_parquet(CIFAR_DIR / "train.parquet", count=1000, seed=0)
    other, _ = load_cifar10_parquet(CIFAR_DIR / "train.parquet", count=1000, seed=1)
    assert torch.equal(images, again) and not torch.equal(images, other)

    splits = load_image_splits("cifar10", max_train_samples=64, max_eval_samples=32)
    assert (len(splits.train), len(splits.eval)) == (64, 32) and splits.label_names[0] == "airplane"
    assert (splits.train.augmentation, splits.train.crop_padding, splits.eval.augmentation) == ("crop_flip", 4, "none")


@needs_fashion
def test_fashion_mnist_counts_match_source_md():
    splits = load_image_splits("fashion_mnist")
    assert splits.train.images.shape == (60_000, 1, 28, 28) and splits.eval.images.shape == (10_000, 1, 28, 28)
    assert splits.train.labels.bincount().tolist() == [6_000] * 10
    assert splits.eval.labels.bincount().tolist() == [1_000] * 10
    assert abs(splits.train.images.float().mean().item() - 72.9) < 0.1
    assert splits.train.augmentation == "crop" and splits.label_names[9] == "Ankle boot"


def test_digits_load_offline_with_a_fixed_stratified_split():
    splits = load_image_splits("digits")
    assert (len(splits.train), len(splits.eval)) == (1437, 360)
    assert splits.train.images.shape[1:] == (1, 8, 8) and splits.train.images.max() == 255
    assert splits.eval.labels.bincount().min() >= 35  # stratified: 35-37 of each digit
    assert splits.train.augmentation == "none" and splits.num_labels == 10
    again = load_image_splits("digits")
    assert torch.equal(splits.eval.images, again.eval.images)
    # normalised with the train split's own statistics
    pixels = torch.stack([splits.train[i]["pixel_values"] for i in range(len(splits.train))])
    assert abs(pixels.mean().item()) < 1e-3 and abs(pixels.std().item() - 1) < 1e-2


def test_local_datasets_folder_with_image_and_label_columns(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    for split, count in (("train", 30), ("test", 12)):
        rows = {
            "image": [Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)) for _ in range(count)],
            "label": [i % 3 for i in range(count)],
        }
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    splits = load_image_splits(str(tmp_path), max_train_samples=20, image_size=16)
    assert splits.label_names == ["a", "b", "c"] and (len(splits.train), len(splits.eval)) == (20, 12)
    assert splits.train.images.shape == (20, 3, 16, 16) and splits.train.crop_padding == 2


# ---- schedules and arguments ----


def test_step_schedule_milestones_in_each_unit():
    # 50,000 images at batch 64: 782 steps per stock epoch; with k=10 selection a Trainer epoch is 79 steps.
    assert StepSchedule((0.5, 0.75)).milestone_steps(1000, 79, 782) == [500, 750]
    assert StepSchedule((32, 35, 38), "sample_epoch").milestone_steps(31280, 79, 782) == [25024, 27370, 29716]
    assert StepSchedule((2,), "epoch").milestone_steps(1000, 79, 782) == [158]
    assert StepSchedule((10, 20), "step").milestone_steps(1000, 79, 782) == [10, 20]
    with pytest.raises(ValueError, match="increasing"):
        StepSchedule((0.75, 0.5))
    with pytest.raises(ValueError, match="< 1"):
        StepSchedule((0.5, 1.5))


def test_step_lr_multiplier():
    multipliers = [step_lr_multiplier(s, [3, 5], 0.2) for s in range(7)]
    np.testing.assert_allclose(multipliers, [1, 1, 1, 0.2, 0.2, 0.04, 0.04])
    np.testing.assert_allclose([step_lr_multiplier(s, [3], 0.1, warmup_steps=2) for s in range(4)], [0, 0.5, 1, 0.1])


def test_schedule_preset_sets_sgd_defaults_that_flags_override(tmp_path):
    image_args, args = parse_args(["--schedule", "early_drop_resnet44", "--output_dir", str(tmp_path)])
    assert (args.optim, args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (
        "sgd",
        0.1,
        1e-4,
        64,
    )
    assert args.lr_scheduler_type == "constant"
    assert (image_args.lr_drops, image_args.lr_drop_unit, image_args.train_sample_epochs) == (
        "32,35,38",
        "sample_epoch",
        40,
    )
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer_cls is torch.optim.SGD and optimizer_kwargs == {"lr": 0.1, "momentum": 0.9}

    image_args, args = parse_args(
        ["--schedule", "wrn_cifar", "--learning_rate", "0.05", "--max_steps", "10", "--output_dir", str(tmp_path)]
    )
    assert (args.learning_rate, args.weight_decay, args.max_steps) == (0.05, 5e-4, 10)
    assert image_args.train_sample_epochs is None and image_args.lr_drops == "0.3,0.6,0.8"
    assert set(SCHEDULE_PRESETS) == {"resnet_cifar", "wrn_cifar", "early_drop_resnet44", "early_drop_wrn"}

    # The preset's SGD with a cosine schedule instead of its drops.
    image_args, args = parse_args(
        [
            "--schedule",
            "resnet_cifar",
            "--lr_drops",
            "",
            "--lr_scheduler_type",
            "cosine",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert image_args.step_schedule() is None and args.lr_scheduler_type == "cosine" and args.weight_decay == 1e-4


def test_invalid_schedule_arguments_fail_up_front(tmp_path):
    out = ["--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="replaces lr_scheduler_type"):
        parse_args(["--lr_drops", "0.5", "--lr_scheduler_type", "cosine", *out])
    with pytest.raises(ValueError, match="increasing"):
        parse_args(["--lr_drops", "0.8,0.5", *out])
    with pytest.raises(ValueError, match="model_kwargs"):
        parse_args(["--model_kwargs", "[1]", *out])


def test_lr_drops_beyond_the_last_step_fail_or_warn(caplog):
    schedule = StepSchedule((32, 35, 38), "sample_epoch")
    # every drop beyond the end: the rate would never drop, an error naming the fields
    with pytest.raises(ValueError, match=r"lr_drops=32,35,38 \(lr_drop_unit='sample_epoch'\).*max_steps=10"):
        check_milestones_within_training(schedule, [1024, 1120, 1216], 10)
    with pytest.raises(ValueError, match="never drop"):
        check_milestones_within_training(schedule, [10, 11, 12], 10)  # a drop at max_steps never takes effect
    # some beyond: a warning that names the lost drops
    with caplog.at_level("WARNING", logger="tasks.image"):
        check_milestones_within_training(schedule, [8, 10, 12], 10)
    assert "the drops at steps [10, 12] never happen" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tasks.image"):
        check_milestones_within_training(schedule, [7, 8, 9], 10)
    assert caplog.text == ""


def test_early_drop_preset_cut_short_by_max_steps_fails_before_training(tmp_path):
    # digits: ceil(1,437 / 64) = 23 steps per sample epoch, so the drops at sample epochs 32, 35, 38 are
    # steps 736 / 805 / 874 of a 10-step run
    argv = ["--dataset_name", "digits", "--schedule", "early_drop_resnet44", "--max_steps", "10"]
    out = ["--output_dir", str(tmp_path), "--report_to", "none", "--save_strategy", "no", "--use_cpu"]
    with pytest.raises(ValueError, match=r"optimizer steps \[736, 805, 874\].*max_steps=10"):
        main([*argv, *out])
    assert not (tmp_path / "metrics.json").exists()


def test_eval_batch_defaults_to_256_unless_given(tmp_path):
    _, args = parse_args(["--output_dir", str(tmp_path)])
    assert args.per_device_eval_batch_size == 256 and args.per_device_train_batch_size == 8
    _, args = parse_args(["--output_dir", str(tmp_path), "--per_device_eval_batch_size", "8"])
    assert args.per_device_eval_batch_size == 8


def test_trainer_epoch_vs_sample_epoch_milestones_under_selection(tmp_path):
    from hf_margin import MarginTrainingArguments

    splits = load_image_splits("digits")
    model = build_model("cifar_resnet20", splits.label_names, in_chans=1)
    milestones = {}
    for unit in ("epoch", "sample_epoch"):
        args = MarginTrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=32,
            selection="uniform",
            selection_oversample=4,
            max_steps=100,
            report_to="none",
            use_cpu=True,
        )
        trainer = ImageTrainer(
            model=model, args=args, train_dataset=splits.train, lr_schedule=StepSchedule((1,), unit)
        )
        trainer.set_initial_training_values(args, trainer.get_train_dataloader())
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
        milestones[unit] = trainer.lr_milestones
    # 1,437 images: a Trainer epoch has ceil(1437 / 128) = 12 pools, a stock epoch ceil(1437 / 32) = 45 batches.
    assert milestones == {"epoch": [12], "sample_epoch": [45]}


def test_compute_accuracy():
    from transformers import EvalPrediction

    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert compute_accuracy(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0, 0]))) == {"accuracy": 0.75}


# ---- end to end ----


@needs_cifar
@pytest.mark.slow
def test_cifar10_recipe_with_mms_selection(tmp_path):
    record = main(
        [
            "--dataset_name", "cifar10",
            "--model_name_or_path", "cifar_resnet20",
            "--max_train_samples", "128",
            "--max_eval_samples", "64",
            "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "32",
            "--selection", "mms",
            "--selection_oversample", "4",
            "--max_steps", "3",
            "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.05",
            "--lr_drops", "0.5",
            "--output_dir", str(tmp_path),
            "--report_to", "none",
            "--save_strategy", "no",
            "--use_cpu",
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert 0.0 <= saved["eval_accuracy"] <= 1.0 and saved["eval_samples"] == 64
    assert saved["train_steps"] == 3 and saved["train_runtime"] > 0
    assert saved["selection"] == "mms" and saved["lr_milestones"] == [2]


@pytest.mark.slow
def test_digits_recipe_with_mmr_and_a_sample_epoch_schedule(tmp_path):
    record = main(
        [
            "--dataset_name", "digits",
            "--model_name_or_path", "cifar_resnet20",
            "--max_train_samples", "256",
            "--per_device_train_batch_size", "64",
            "--per_device_eval_batch_size", "128",
            "--schedule", "resnet_cifar",
            "--train_sample_epochs", "2",
            "--mmr_alpha", "1e-3",
            "--output_dir", str(tmp_path),
            "--report_to", "none",
            "--save_strategy", "no",
            "--use_cpu",
        ]
    )  # fmt: skip
    # 2 sample epochs of ceil(256 / 64) = 4 steps; drops at 50% and 75% of them.
    assert record["train_steps"] == 8 and record["lr_milestones"] == [4, 6]
    assert record["eval_samples"] == 360 and 0.0 <= record["eval_accuracy"] <= 1.0
    assert record["mmr_alpha"] == 1e-3 and np.isfinite(record["train_loss"])
