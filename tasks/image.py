"""
Image classification with margin-based training: `python -m tasks.image`.

A timm architecture, wrapped in `transformers.TimmWrapperForImageClassification`, trained by
`hf_margin.MarginTrainer` (MMS selective sampling and / or MMR regularization, or neither), then evaluated
once; the final metrics go to `<output_dir>/metrics.json`.

`--model_name_or_path` is either a timm architecture name, built with random weights and timm's own
initialization (`cifar_resnet44`, `wide_resnet28_10`, `resnet10t`, ...; the CIFAR nets come from
`tasks.cifar_models`), or a checkpoint (a hub id such as `timm/resnet18.a1_in1k`, or a local
`save_pretrained` folder) loaded with `from_pretrained` and given a new classifier.

`--schedule` applies the papers' SGD recipes as defaults (any flag given on the command line wins):

| preset | lr | momentum | weight decay | batch | lr drops | length |
|---|---|---|---|---|---|---|
| `resnet_cifar` | 0.1 | 0.9 | 1e-4 | 128 | x0.1 at 50%, 75% | 164 epochs (He et al.: 64k steps) |
| `wrn_cifar` | 0.1 | 0.9 | 5e-4 | 128 | x0.2 at 30%, 60%, 80% | 200 epochs (Zagoruyko & Komodakis) |
| `early_drop_resnet44` | 0.1 | 0.9 | 1e-4 | 64 | x0.1 at epochs 32, 35, 38 | 40 epochs (MMS paper, CIFAR-10) |
| `early_drop_wrn` | 0.1 | 0.9 | 5e-4 | 64 | x0.2 at epochs 50, 53, 56 | 60 epochs (MMS paper, CIFAR-100) |

The epochs of the presets are *sample epochs*: ceil(N / total batch) optimizer steps, the length of a
stock-training epoch, whatever the selection. With selection on, the Trainer's own epoch scores every
sample once and so has k times fewer optimizer steps; counting in sample epochs keeps the number of
optimizer steps (and of back-propagated samples) equal across selection criteria, as in the papers,
whose code drops the rate at steps 24,992 / 27,335 / 29,678 = 781 x 32 / 35 / 38 (CIFAR-10, batch 64).
Milestones are turned into steps when the Trainer creates its scheduler, from its own `max_steps`, its
epoch length and the dataset size; `--lr_drop_unit epoch` counts the Trainer's epochs instead.

Examples:

```bash
# The MMS paper's CIFAR-10 run: ResNet-44, early-drop regime, MMS selection of 64 out of 640.
python -m tasks.image --dataset_name cifar10 --model_name_or_path cifar_resnet44 \
    --schedule early_drop_resnet44 --selection mms --selection_oversample 10 --output_dir runs/r44_mms
# A CPU smoke run on 2,000 images.
python -m tasks.image --dataset_name cifar10 --model_name_or_path cifar_resnet20 \
    --max_train_samples 2000 --max_eval_samples 500 --max_steps 200 --per_device_train_batch_size 64 \
    --optim sgd --optim_args momentum=0.9 --learning_rate 0.05 --output_dir runs/smoke --report_to none
```
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TrainingArguments

import tasks.cifar_models  # noqa: F401  (registers the CIFAR architectures in timm)
from hf_margin import MarginTrainer, MarginTrainingArguments
from tasks.common import describe_settings
from tasks.glue_metrics import accuracy, compute_metrics_from_logits
from tasks.image_data import AUGMENTATIONS, TensorImageDataset, collate_images, load_image_splits
from tasks.recipe import Recipe, RecipeData

logger = logging.getLogger(__name__)

LR_DROP_UNITS = ("fraction", "epoch", "sample_epoch", "step")

_SGD = {"optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 0.1, "lr_scheduler_type": "constant"}
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2016, CIFAR ResNets: 64k steps of batch 128 (~164 epochs), lr / 10 at 32k and 48k.
    "resnet_cifar": {
        **_SGD,
        "weight_decay": 1e-4,
        "per_device_train_batch_size": 128,
        "lr_drops": "0.5,0.75",
        "lr_drop_unit": "fraction",
        "lr_drop_factor": 0.1,
        "train_sample_epochs": 164,
    },
    # Zagoruyko & Komodakis 2016, WRN: 200 epochs of batch 128, lr x 0.2 at epochs 60, 120, 160.
    "wrn_cifar": {
        **_SGD,
        "weight_decay": 5e-4,
        "per_device_train_batch_size": 128,
        "lr_drops": "0.3,0.6,0.8",
        "lr_drop_unit": "fraction",
        "lr_drop_factor": 0.2,
        "train_sample_epochs": 200,
    },
    # MMS paper, CIFAR-10 ResNet-44 early drop: 781 steps of 64 per epoch, lr / 10 at epochs 32, 35, 38.
    "early_drop_resnet44": {
        **_SGD,
        "weight_decay": 1e-4,
        "per_device_train_batch_size": 64,
        "lr_drops": "32,35,38",
        "lr_drop_unit": "sample_epoch",
        "lr_drop_factor": 0.1,
        "train_sample_epochs": 40,
    },
    # MMS paper, CIFAR-100 WRN-28-10 early drop: lr x 0.2 at epochs 50, 53, 56.
    "early_drop_wrn": {
        **_SGD,
        "weight_decay": 5e-4,
        "per_device_train_batch_size": 64,
        "lr_drops": "50,53,56",
        "lr_drop_unit": "sample_epoch",
        "lr_drop_factor": 0.2,
        "train_sample_epochs": 60,
    },
}


@dataclass
class ImageArguments:
    """What to train on and with which model and schedule; everything else is a `MarginTrainingArguments` field."""

    dataset_name: str = field(
        default="cifar10",
        metadata={
            "help": "'cifar10', 'cifar100', 'fashion_mnist', 'digits' (scikit-learn, offline), or any "
            "datasets.load_dataset name / folder with an image and a label column."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration name for datasets.load_dataset."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with local copies (cifar10-jpeg/, fashion-mnist/, or the dataset folder itself). "
            "Default: ../shared/data next to the repository; the hub is used when the files are missing."
        },
    )
    model_name_or_path: str = field(
        default="cifar_resnet20",
        metadata={
            "help": "A timm architecture (random init, e.g. cifar_resnet44, wide_resnet28_10, resnet10t) or a "
            "checkpoint to fine-tune (hub id such as timm/resnet18.a1_in1k, or a local save_pretrained folder)."
        },
    )
    model_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON of extra timm.create_model arguments for a random-init model, e.g. '{\"drop_rate\": 0.3}' "
            'or \'{"shortcut": "B"}\'.'
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Resize every image to this square size once, at load time."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this many images (fixed by subset_seed)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a random subset of this many images (fixed by subset_seed)."}
    )
    subset_seed: int = field(
        default=0, metadata={"help": "Seed of the data subsets, apart from --seed so all runs see the same images."}
    )
    augmentation: str = field(
        default="auto",
        metadata={
            "help": "Training augmentation: 'auto' (the dataset's standard one), 'none', 'flip', 'crop', 'crop_flip'.",
            "choices": list(AUGMENTATIONS),
        },
    )
    crop_padding: int | None = field(
        default=None, metadata={"help": "Zero padding of the random crop (default: the dataset's, 4 for CIFAR)."}
    )
    schedule: str = field(
        default="none",
        metadata={
            "help": "A preset of the papers' SGD recipes, applied as defaults: " + ", ".join(SCHEDULE_PRESETS) + ".",
            "choices": ["none", *SCHEDULE_PRESETS],
        },
    )
    lr_drops: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated milestones at which the learning rate is multiplied by lr_drop_factor, in "
            "lr_drop_unit; replaces lr_scheduler_type. An empty string turns a preset's drops off."
        },
    )
    lr_drop_unit: str = field(
        default="fraction",
        metadata={
            "help": "Unit of lr_drops: 'fraction' of max_steps, Trainer 'epoch', 'sample_epoch' (ceil(N / total "
            "batch) steps, a stock epoch whatever the selection), or optimizer 'step'.",
            "choices": list(LR_DROP_UNITS),
        },
    )
    lr_drop_factor: float = field(default=0.1, metadata={"help": "Learning-rate multiplier at each milestone."})
    train_sample_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Training length in sample epochs (sets max_steps = ceil(epochs * ceil(N / total batch))), so "
            "runs with and without selection take the same number of optimizer steps."
        },
    )

    def __post_init__(self):
        if self.schedule != "none" and self.schedule not in SCHEDULE_PRESETS:
            raise ValueError(f"schedule must be 'none' or one of {list(SCHEDULE_PRESETS)}, got {self.schedule!r}.")
        if self.lr_drop_unit not in LR_DROP_UNITS:
            raise ValueError(f"lr_drop_unit must be one of {LR_DROP_UNITS}, got {self.lr_drop_unit!r}.")
        if not 0.0 < self.lr_drop_factor <= 1.0:
            raise ValueError(f"lr_drop_factor must be in (0, 1], got {self.lr_drop_factor}.")
        if self.train_sample_epochs is not None and not self.train_sample_epochs > 0:
            raise ValueError(f"train_sample_epochs must be > 0, got {self.train_sample_epochs}.")
        if self.lr_drops is not None and not self.lr_drops.strip():
            self.lr_drops = None  # `--lr_drops ""` turns a preset's drops off
        if self.lr_drops is not None:
            self.step_schedule()  # validates the milestones now rather than when training starts
        if self.model_kwargs is not None:
            try:
                kwargs = json.loads(self.model_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"model_kwargs must be a JSON object, got {self.model_kwargs!r}.") from err
            if not isinstance(kwargs, dict):
                raise ValueError(f"model_kwargs must be a JSON object, got {self.model_kwargs!r}.")

    @property
    def parsed_model_kwargs(self) -> dict[str, Any] | None:
        """`model_kwargs` as a dict (None when not given)."""
        return json.loads(self.model_kwargs) if self.model_kwargs else None

    def step_schedule(self) -> StepSchedule | None:
        """The step schedule described by `lr_drops`, `lr_drop_unit`, `lr_drop_factor`; None without drops."""
        if self.lr_drops is None:
            return None
        try:
            drops = tuple(float(x) for x in self.lr_drops.split(",") if x.strip())
        except ValueError as err:
            raise ValueError(f"lr_drops must be comma-separated numbers, got {self.lr_drops!r}.") from err
        return StepSchedule(drops, self.lr_drop_unit, self.lr_drop_factor)


@dataclass(frozen=True)
class StepSchedule:
    """
    A piecewise-constant learning rate: the base rate, multiplied by `factor` at each milestone
    (`torch.optim.lr_scheduler.MultiStepLR`), with milestones given in `unit`:
    `"fraction"` of the training steps, Trainer `"epoch"`s, `"sample_epoch"`s or optimizer `"step"`s.
    """

    drops: tuple[float, ...]
    unit: str = "fraction"
    factor: float = 0.1

    def __post_init__(self):
        if self.unit not in LR_DROP_UNITS:
            raise ValueError(f"lr_drop_unit must be one of {LR_DROP_UNITS}, got {self.unit!r}.")
        if not self.drops or any(d <= 0 for d in self.drops) or list(self.drops) != sorted(self.drops):
            raise ValueError(f"lr_drops must be positive and increasing, got {self.drops}.")
        if self.unit == "fraction" and self.drops[-1] >= 1:
            raise ValueError(f"lr_drops in unit 'fraction' must be < 1, got {self.drops}.")

    def milestone_steps(self, max_steps: int, steps_per_epoch: int, steps_per_sample_epoch: int) -> list[int]:
        """
        The optimizer steps at which the rate drops.

        Args:
            max_steps (`int`): optimizer steps of the whole run.
            steps_per_epoch (`int`): optimizer steps of one Trainer epoch (k times fewer with selection).
            steps_per_sample_epoch (`int`): ceil(N / total batch), one stock epoch.
        """
        steps_per_unit = {
            "fraction": max_steps,
            "epoch": steps_per_epoch,
            "sample_epoch": steps_per_sample_epoch,
            "step": 1,
        }[self.unit]
        return [round(d * steps_per_unit) for d in self.drops]


def check_milestones_within_training(schedule: StepSchedule, milestones: Sequence[int], max_steps: int) -> None:
    """
    Refuse a step schedule whose every drop falls at or after the last optimizer step (the rate would never
    drop, silently), and warn when some of its drops do. A preset's drops in sample epochs land there when
    `--max_steps` shortens the run, e.g. `early_drop_resnet44` with 32 steps per epoch drops at 1024 / 1120 / 1216.

    Args:
        schedule ([`StepSchedule`]): the drops as given, for the message.
        milestones (`Sequence[int]`): the optimizer steps they became.
        max_steps (`int`): optimizer steps of the run; a drop at step `max_steps` or later never takes effect.
    """
    beyond = [m for m in milestones if m >= max_steps]
    if not beyond:
        return
    given = ",".join(f"{d:g}" for d in schedule.drops)
    what = (
        f"lr_drops={given} (lr_drop_unit={schedule.unit!r}) become optimizer steps {list(milestones)}, but training "
        f"has max_steps={max_steps}"
    )
    fix = (
        "lengthen training (--max_steps, --num_train_epochs or --train_sample_epochs), give drops that fit "
        "(--lr_drops, --lr_drop_unit fraction), or turn the drops off with --lr_drops ''"
    )
    if len(beyond) == len(milestones):
        raise ValueError(f"{what}: the learning rate would never drop. Either {fix}.")
    logger.warning("%s: the drops at steps %s never happen. To keep them, %s.", what, beyond, fix)


def step_lr_multiplier(step: int, milestones: Sequence[int], factor: float, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier at `step`: `factor ** (milestones passed)`, after a linear warmup from 0."""
    warmup = step / warmup_steps if step < warmup_steps else 1.0
    return warmup * factor ** bisect_right(list(milestones), step)


def steps_per_sample_epoch(num_samples: int, args: TrainingArguments) -> int:
    """Optimizer steps of one stock epoch over `num_samples`: ceil(N / (batch x accumulation x processes))."""
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return max(math.ceil(num_samples / total_batch), 1)


class ImageTrainer(MarginTrainer):
    """
    [`~hf_margin.MarginTrainer`] whose learning rate follows a [`StepSchedule`] when one is given (the
    Trainer's schedulers have no step drops). Milestones become steps when the scheduler is created,
    from the run's `max_steps`, the Trainer's epoch length and the train set size.

    Args:
        lr_schedule ([`StepSchedule`], *optional*): without it, `lr_scheduler_type` applies as usual.
        *args, **kwargs: as for [`~hf_margin.MarginTrainer`].
    """

    def __init__(self, *args: Any, lr_schedule: StepSchedule | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lr_schedule = lr_schedule
        self._update_steps_per_epoch: int | None = None
        self.lr_milestones: list[int] = []

    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any) -> tuple:
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]  # num_update_steps_per_epoch, as the Trainer counts it
        return values

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_schedule is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_schedule.unit == "epoch" and self._update_steps_per_epoch is None:
            raise RuntimeError("lr_drop_unit='epoch' needs the Trainer's epoch length, which is not known yet.")
        self.lr_milestones = self.lr_schedule.milestone_steps(
            max_steps=num_training_steps,
            steps_per_epoch=self._update_steps_per_epoch or 1,
            steps_per_sample_epoch=steps_per_sample_epoch(len(self.train_dataset), self.args),
        )
        check_milestones_within_training(self.lr_schedule, self.lr_milestones, num_training_steps)
        milestones, factor = self.lr_milestones, self.lr_schedule.factor
        warmup_steps = self.args.get_warmup_steps(num_training_steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer if optimizer is not None else self.optimizer,
            lambda step: step_lr_multiplier(step, milestones, factor, warmup_steps),
        )
        self._created_lr_scheduler = True  # so a second train() call builds a fresh one, as Trainer does
        logger.info("Step schedule: lr x %s at optimizer steps %s of %s", factor, milestones, num_training_steps)
        return self.lr_scheduler


# top-1 accuracy from the eval logits [N, C] and labels [N]
compute_accuracy = compute_metrics_from_logits(lambda predictions, labels: {"accuracy": accuracy(predictions, labels)})


def is_checkpoint(name_or_path: str) -> bool:
    """A local folder or a hub id (`owner/name`) is a checkpoint; a bare name is a timm architecture."""
    return Path(name_or_path).is_dir() or "/" in name_or_path


def build_model(
    name_or_path: str,
    label_names: Sequence[str],
    in_chans: int = 3,
    model_kwargs: dict[str, Any] | None = None,
) -> TimmWrapperForImageClassification:
    """
    A `TimmWrapperForImageClassification` with `len(label_names)` classes.

    A timm architecture name gives random weights with timm's own initialization: the wrapper's
    `post_init` re-initializes every conv and linear layer with N(0, 0.02) and every BatchNorm to
    weight 1, which undoes timm's He init and zero-init of the last BN of each residual branch, so the
    weights of a freshly created timm model (same seed state) are loaded back into `model.timm_model`.
    A checkpoint is loaded with `from_pretrained` and gets a new classifier when the class count differs.

    Args:
        name_or_path (`str`): timm architecture, hub id or local folder.
        label_names (`Sequence[str]`): class names, in label order.
        in_chans (`int`, *optional*, defaults to 3): input channels of a random-init model.
        model_kwargs (`dict`, *optional*): extra `timm.create_model` arguments of a random-init model.
    """
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    if is_checkpoint(name_or_path):
        if model_kwargs:
            raise ValueError("model_kwargs only apply to a random-init timm architecture, not a checkpoint.")
        return TimmWrapperForImageClassification.from_pretrained(
            name_or_path,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
        )
    if not timm.is_model(name_or_path):
        raise ValueError(
            f"model_name_or_path={name_or_path!r} is neither a timm architecture (see timm.list_models(); "
            "the CIFAR ones are in tasks.cifar_models) nor a checkpoint folder or hub id."
        )
    model_args = {"in_chans": in_chans, **(model_kwargs or {})}
    config = TimmWrapperConfig(
        architecture=name_or_path,
        num_labels=len(label_names),
        id2label=id2label,
        label2id=label2id,
        model_args=model_args,
    )
    model = TimmWrapperForImageClassification(config)
    timm_init = timm.create_model(name_or_path, pretrained=False, num_classes=len(label_names), **model_args)
    model.timm_model.load_state_dict(timm_init.state_dict())
    return model


def model_input_spec(model: TimmWrapperForImageClassification) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Channels, mean and std a pretrained model expects (timm's `pretrained_cfg`, `model_args` first)."""
    cfg = getattr(model.timm_model, "pretrained_cfg", None) or {}
    in_chans = (model.config.model_args or {}).get("in_chans") or cfg.get("input_size", (3,))[0]
    mean, std = tuple(cfg.get("mean", ())), tuple(cfg.get("std", ()))
    if len(mean) != in_chans or len(std) != in_chans:
        mean, std = (0.5,) * in_chans, (0.5,) * in_chans
    return in_chans, mean, std


def _explicit_flags(argv: Sequence[str]) -> set[str]:
    """Field names given on the command line (`--name value`, `--name=value`, `--name-with-dashes`)."""
    return {tok[2:].split("=", 1)[0].replace("-", "_") for tok in argv if tok.startswith("--")}


class ImageRecipe(Recipe):
    """
    Images: decoded tensor splits, a timm model ([`build_model`]), [`ImageTrainer`] with its step schedules,
    and the `--schedule` presets applied as defaults of the command line.
    """

    prog = "python -m tasks.image"
    description = __doc__
    arguments = ImageArguments
    # the Trainer's default of 8 makes evaluation of small images needlessly slow
    eval_batch_size = 256
    trainer_class = ImageTrainer

    def parse_args(self, argv: Sequence[str] | None = None) -> tuple[ImageArguments, MarginTrainingArguments]:
        """
        A `--schedule` preset is spliced in front of the command line, so every flag given explicitly overrides it;
        an explicit `--max_steps` or `--num_train_epochs` also replaces the preset's `train_sample_epochs`.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        explicit = _explicit_flags(argv)
        pre_parser = argparse.ArgumentParser(add_help=False)
        pre_parser.add_argument("--schedule", default="none")
        schedule = pre_parser.parse_known_args(argv)[0].schedule
        preset = dict(SCHEDULE_PRESETS.get(schedule, {}))
        if explicit & {"max_steps", "num_train_epochs", "train_sample_epochs"}:
            preset.pop("train_sample_epochs", None)
        if "lr_drops" in explicit and "lr_scheduler_type" not in explicit:
            preset["lr_scheduler_type"] = "constant"  # the step schedule replaces the Trainer's scheduler
        defaults = [tok for key, value in preset.items() if key not in explicit for tok in (f"--{key}", str(value))]
        image_args, training_args = super().parse_args(defaults + argv)
        if image_args.lr_drops is not None and training_args.lr_scheduler_type != "constant":
            raise ValueError(
                f"lr_drops sets a step schedule, which replaces lr_scheduler_type={training_args.lr_scheduler_type!r}"
                "; drop --lr_scheduler_type or set it to 'constant'."
            )
        return image_args, training_args

    def load_data(self, args: ImageArguments, training_args: MarginTrainingArguments) -> RecipeData:
        splits = load_image_splits(
            args.dataset_name,
            data_dir=args.data_dir,
            config_name=args.dataset_config_name,
            max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            image_size=args.image_size,
            augmentation=args.augmentation,
            crop_padding=args.crop_padding,
            subset_seed=args.subset_seed,
        )
        train, evaluation = splits.train, splits.eval
        sizes = (len(train), len(evaluation), (train.num_channels, *train.image_size), splits.num_labels)
        logger.info(
            "%s from %s: %d train / %d eval images of %s, %d classes", args.dataset_name, splits.source, *sizes
        )
        return RecipeData(
            train=train,
            evals={"eval": evaluation},
            label_names=tuple(splits.label_names),
            compute_metrics=compute_accuracy,
            metric_names=("accuracy",),
            title=f"tasks.image: {args.dataset_name} ({len(train)} train / {len(evaluation)} eval), "
            f"{args.model_name_or_path}",
            # each batch's images are one tensor already (`TensorImageDataset`): handed on, not stacked again
            trainer_kwargs={"lr_schedule": args.step_schedule(), "data_collator": collate_images},
            description={
                "dataset_name": args.dataset_name,
                "model_name_or_path": args.model_name_or_path,
                "model_kwargs": args.parsed_model_kwargs,
                "source": splits.source,
            },
        )

    def build_model(self, args: ImageArguments, data: RecipeData) -> TimmWrapperForImageClassification:
        return build_model(
            args.model_name_or_path, data.label_names, data.train.num_channels, args.parsed_model_kwargs
        )

    def fit_data_to_model(
        self, args: ImageArguments, data: RecipeData, model: TimmWrapperForImageClassification
    ) -> RecipeData:
        if not is_checkpoint(args.model_name_or_path):
            return data
        # A pretrained model sees inputs as it was trained: its channel count and normalisation.
        in_chans, mean, std = model_input_spec(model)

        def fit(dataset: TensorImageDataset) -> TensorImageDataset:
            return dataset.with_channels(in_chans).with_normalization(mean, std)

        return replace(data, train=fit(data.train), evals={prefix: fit(ds) for prefix, ds in data.evals.items()})

    def scoring_dataset(self, data: RecipeData) -> TensorImageDataset:
        return data.train.without_augmentation()

    def configure_training(
        self, args: ImageArguments, training_args: MarginTrainingArguments, train_dataset: Any
    ) -> None:
        if args.train_sample_epochs is not None:
            # e.g. 40 sample epochs x ceil(50,000 / 64) = 40 x 782 = 31,280 optimizer steps, with or without selection
            per_epoch = steps_per_sample_epoch(len(train_dataset), training_args)
            training_args.max_steps = math.ceil(args.train_sample_epochs * per_epoch)

    def run_info(self, args: ImageArguments, data: RecipeData, trainer: ImageTrainer) -> dict[str, Any]:
        return {
            "dataset_name": args.dataset_name,
            "model_name_or_path": args.model_name_or_path,
            "schedule": args.schedule,
            "lr_milestones": trainer.lr_milestones,
            "train_samples": len(data.train),
            "eval_samples": len(data.eval),
        }

    def summary(self, data: RecipeData, record: dict[str, Any], output_dir: str) -> str:
        return (
            f"{data.title}, {describe_settings(record)}: {self.scores(data, record)} after {record['train_steps']} "
            f"steps, {record['train_seconds']:.1f} s training (evaluation excluded)"
        )


RECIPE = ImageRecipe()
main = RECIPE.main
parse_args = RECIPE.parse_args

if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main()
