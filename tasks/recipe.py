"""
The steps every recipe shares, written once: parse the flags, load the data, build the model and the trainer,
train, evaluate and write `<output_dir>/metrics.json`.

A recipe is a [`Recipe`] subclass with its own arguments dataclass, data loading and model; `Recipe.main` runs
the rest, and the active-learning loop (`tasks.active`) drives the same hooks round after round.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import HfArgumentParser, PrinterCallback, ProgressCallback, TrainerCallback, set_seed

from hf_margin import MarginTrainer, MarginTrainingArguments
from tasks.common import describe_settings, write_run_metrics


@dataclass
class RecipeData:
    """
    What a recipe's data loading hands to the shared steps.

    Attributes:
        train: the training split, as the Trainer samples it (tokenised, or decoded images with augmentation).
        evals: metric-key prefix -> eval split (`{"eval": dev}`); the first is also evaluated during training.
        label_names: class id -> name; empty for a regression target (STS-B).
        compute_metrics: the Trainer's `compute_metrics`; `metric_names` (`("accuracy",)`) go in the summary line.
        title: what the run trains on, for the summary line (`"GLUE rte"`).
        trainer_kwargs: further trainer arguments (`data_collator`, `processing_class`, `lr_schedule`).
        description: the data and the model, for the records of `tasks.active`.
    """

    train: Any
    evals: dict[str, Any]
    label_names: tuple[str, ...]
    compute_metrics: Callable[[Any], dict[str, float]]
    metric_names: tuple[str, ...]
    title: str
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def eval(self) -> Any:
        """The headline eval split (prefix `eval`)."""
        return next(iter(self.evals.values()))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def recipe_parser(dataclass_types: Sequence[type], prog: str, description: str | None) -> HfArgumentParser:
    """An `HfArgumentParser` over `dataclass_types` whose `--help` starts with the recipe's docstring."""
    return HfArgumentParser(dataclass_types, prog=prog, description=description, formatter_class=_HelpFormatter)


class Recipe:
    """
    A recipe sets `prog`, `description` and `arguments` (the dataclass of its own flags) and implements
    `load_data` and `build_model`; the other hooks default to doing nothing. `main` parses the recipe's and every
    [`~hf_margin.MarginTrainingArguments`] flag, refuses what cannot run (`check`) before loading anything, loads,
    seeds, builds the model and trainer, trains, evaluates every eval split, writes `metrics.json` and prints a line.
    """

    prog: str
    description: str | None = None
    arguments: type
    # The Trainer's default of 8 makes evaluation needlessly slow; a flag given on the command line wins.
    eval_batch_size: int = 64
    trainer_class: type[MarginTrainer] = MarginTrainer
    save_model: bool = False  # save the trained model to output_dir (unless --save_strategy no)

    def parse_args(self, argv: Sequence[str] | None = None) -> tuple[Any, MarginTrainingArguments]:
        """The recipe's and the Trainer's flags, with the recipe's `per_device_eval_batch_size` default."""
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = recipe_parser((self.arguments, MarginTrainingArguments), self.prog, self.description)
        # recipes record train_seconds (the time axis of their plots and benchmarks) unless told otherwise
        parser.set_defaults(per_device_eval_batch_size=self.eval_batch_size, log_timing=True)
        args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
        return args, training_args

    def check(self, args: Any, training_args: MarginTrainingArguments) -> None:
        """Refuse settings that cannot run, before any data is read."""

    def load_data(self, args: Any, training_args: MarginTrainingArguments) -> RecipeData:
        raise NotImplementedError

    def build_model(self, args: Any, data: RecipeData) -> nn.Module:
        """A fresh model for `data`'s classes, initialised from the current torch seed."""
        raise NotImplementedError

    def fit_data_to_model(self, args: Any, data: RecipeData, model: nn.Module) -> RecipeData:
        """The data as `model` expects it (a pretrained image model's channels and normalisation)."""
        return data

    def scoring_dataset(self, data: RecipeData) -> Any:
        """The training samples in the same order as they are scored for labelling: no augmentation."""
        return data.train

    def configure_training(self, args: Any, training_args: MarginTrainingArguments, train_dataset: Any) -> None:
        """Set training arguments that depend on the training set (its length in sample epochs)."""

    def make_trainer(
        self,
        args: Any,
        training_args: MarginTrainingArguments,
        model: nn.Module,
        data: RecipeData,
        train_dataset: Any,
    ) -> MarginTrainer:
        """The recipe's trainer on `train_dataset` (all of `data.train`, or a labelled part of it)."""
        self.configure_training(args, training_args, train_dataset)
        return self.trainer_class(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=data.eval,
            compute_metrics=data.compute_metrics,
            **data.trainer_kwargs,
        )

    def run_info(self, args: Any, data: RecipeData, trainer: MarginTrainer) -> dict[str, Any]:
        """The recipe's own keys of `metrics.json`, besides the eval metrics and the training record."""
        return {}

    def scores(self, data: RecipeData, record: dict[str, Any]) -> str:
        """`eval_accuracy=0.8125, eval_f1=0.8400`: the summary metrics of every eval split."""
        keys = [f"{prefix}_{name}" for prefix in data.evals for name in data.metric_names]
        return ", ".join(f"{key}={record[key]:.4f}" for key in keys if key in record)

    def summary(self, data: RecipeData, record: dict[str, Any], output_dir: str) -> str:
        """The line printed at the end of `main`."""
        return (
            f"{data.title}: {self.scores(data, record)} | {record['train_steps']} steps, "
            f"{record['train_seconds']:.1f} s training (evaluation excluded) | {describe_settings(record)} | "
            f"{Path(output_dir) / 'metrics.json'}"
        )

    def main(self, argv: Sequence[str] | None = None, progress: TrainerCallback | None = None) -> dict[str, Any]:
        """
        Run the recipe on `argv` (default: `sys.argv[1:]`); `progress`, a callback, replaces the Trainer's progress
        bar and printed log dicts (the demo's one line per evaluation). Returns what `metrics.json` holds: the final
        `eval_*` metrics, `train_runtime`, `train_seconds`, `train_steps`, `train_loss`, the margin settings and the
        recipe's `run_info`.
        """
        args, training_args = self.parse_args(argv)
        self.check(args, training_args)
        data = self.load_data(args, training_args)
        set_seed(training_args.seed)  # the model's random init (or its new head), before the Trainer seeds again
        model = self.build_model(args, data)
        data = self.fit_data_to_model(args, data, model)
        trainer = self.make_trainer(args, training_args, model, data, data.train)
        if progress is not None:
            trainer.remove_callback(ProgressCallback)
            trainer.remove_callback(PrinterCallback)
            trainer.add_callback(progress)
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if self.save_model and training_args.save_strategy != "no":
            trainer.save_model()

        eval_metrics: dict[str, Any] = {}
        for prefix, dataset in data.evals.items():
            eval_metrics.update(trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix))
        record = write_run_metrics(
            trainer, train_result.metrics, {**eval_metrics, **self.run_info(args, data, trainer)}
        )
        if trainer.is_world_process_zero():
            print(self.summary(data, record, training_args.output_dir))
        return record
