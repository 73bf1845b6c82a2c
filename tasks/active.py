"""
Pool-based active learning: `python -m tasks.active --recipe {image,glue,text} ...`.

Start from a seeded random labelled set of `--initial_labels` samples of the train split (the pool); then,
each round, train a model on the labelled set with the usual recipe, evaluate it, and move the `--query_size`
samples that `--criterion` ranks first (`hf_margin.score_dataset`, label-free) from the unlabeled rest of the
pool into the labelled set. After `--rounds` acquisitions the model has been trained `rounds + 1` times, on
`initial_labels + r * query_size` labels in round r. Writes `<output_dir>/active.json` (accuracy vs number of
labels, the acquired indices of every round) and `<output_dir>/active.png`.

The data and the model come from the recipes themselves (`tasks.recipe.Recipe`): `--recipe image` takes every
`tasks.image` flag (`--dataset_name`, `--model_name_or_path`, `--max_train_samples` for the pool size, ...) and
trains with its `ImageTrainer`; `--recipe glue` takes every `tasks.glue` flag (`--task_name`, `--data_dir`, ...),
`--recipe text` every `tasks.text` flag (`--train_file`, `--text_column_names`, ...). Every
`MarginTrainingArguments` flag applies to each round's training (`--num_train_epochs`, `--learning_rate`,
margin selection, ...); `--train_sample_epochs` (image) sets each round's steps from its own labelled set.
`--schedule` presets are for full-data training and are refused here: give the optimiser flags explicitly.

`--round_start initial` (the default, the standard protocol) trains every round from the same initial
weights (those built from `--seed` before round 0 are restored), so a round's accuracy depends only on
which samples are labelled; `--round_start continue` fine-tunes the previous round's model on the grown labelled set.

Example (Fashion-MNIST, a 10,000-image pool, 100 initial labels and 5 rounds of +100 by MMS, a small CNN
trained 30 epochs of its labelled set per round):

```bash
python -m tasks.active --recipe image --dataset_name fashion_mnist --max_train_samples 10000 \\
    --max_eval_samples 5000 --augmentation none --model_name_or_path cifar_cnn --train_sample_epochs 30 \\
    --per_device_train_batch_size 32 --learning_rate 3e-3 --criterion mms --initial_labels 100 \\
    --query_size 100 --rounds 5 --output_dir runs/al_fmnist_mms --save_strategy no --report_to none
```
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import set_seed

from hf_margin import RANKING_CRITERIA, MarginTrainingArguments, select_for_labelling
from tasks.recipe import Recipe, RecipeData, recipe_parser

RECIPES = ("image", "glue", "text")  # modules tasks.<name>, each with its RECIPE
ROUND_STARTS = ("initial", "continue")


@dataclass
class ActiveArguments:
    """The active-learning loop: which recipe, how many labels to start with and to add, and how to choose them."""

    recipe: str = field(metadata={"help": "Recipe whose data, model and training are used.", "choices": RECIPES})
    criterion: str = field(
        default="mms",
        metadata={
            "help": "Acquisition criterion (hf_margin.score_dataset): mms, breaking_ties, least_confidence, "
            "entropy, or random (the control).",
            "choices": list(RANKING_CRITERIA),
        },
    )
    initial_labels: int = field(default=100, metadata={"help": "Size of the seeded random initial labelled set."})
    query_size: int = field(default=100, metadata={"help": "Samples acquired (labelled) per round."})
    rounds: int = field(default=5, metadata={"help": "Acquisition rounds; the model is trained rounds + 1 times."})
    round_start: str = field(
        default="initial",
        metadata={
            "help": "Weights each round starts from: 'initial' (the same initial weights every round, the standard "
            "protocol) or 'continue' (the previous round's trained model).",
            "choices": list(ROUND_STARTS),
        },
    )
    metric: str = field(default="eval_accuracy", metadata={"help": "Eval metric recorded per round."})

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}.")
        if self.criterion not in RANKING_CRITERIA:
            raise ValueError(f"criterion must be one of {RANKING_CRITERIA}, got {self.criterion!r}.")
        if self.round_start not in ROUND_STARTS:
            raise ValueError(f"round_start must be one of {ROUND_STARTS}, got {self.round_start!r}.")
        for name in ("initial_labels", "query_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}.")

    @property
    def labels_needed(self) -> int:
        """Labels at the end of the loop: initial + rounds x query."""
        return self.initial_labels + self.rounds * self.query_size


def recipe_named(name: str) -> Recipe:
    """The `RECIPE` of `tasks.<name>` (imported only when asked for: each pulls in its own stack)."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {RECIPES}, got {name!r}.")
    return importlib.import_module(f"tasks.{name}").RECIPE


@dataclass
class ActiveTask:
    """
    A recipe with its arguments and loaded data: the pool is `data.train`, scored as `recipe.scoring_dataset`
    gives it (no augmentation), and every round trains `recipe.make_trainer` on its labelled part.
    """

    recipe: Recipe
    args: Any
    data: RecipeData


def load_task(recipe: Recipe, recipe_args: Any, training_args: MarginTrainingArguments) -> ActiveTask:
    """The recipe's refusals, then its data; full-data presets and regression targets are refused here."""
    if getattr(recipe_args, "schedule", "none") != "none":
        raise ValueError(
            f"schedule={recipe_args.schedule!r}: the presets are full-data recipes; give the optimiser and "
            "--train_sample_epochs flags explicitly for the small labelled sets of active learning."
        )
    recipe.check(recipe_args, training_args)
    data = recipe.load_data(recipe_args, training_args)
    if not data.label_names:
        raise ValueError(f"{data.title} is a regression task: active learning by class scores needs classes.")
    return ActiveTask(recipe, recipe_args, data)


def labelled_subset(dataset: Any, indices: Sequence[int]) -> Any:
    """`dataset` restricted to `indices`: `datasets.Dataset.select`, or a `torch.utils.data.Subset`."""
    if hasattr(dataset, "select"):
        return dataset.select(list(indices))
    return torch.utils.data.Subset(dataset, list(indices))


def initial_labelled(pool_size: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct pool indices drawn with `seed`, sorted: the same for every criterion of a seed."""
    return np.sort(np.random.default_rng(seed).choice(pool_size, size=count, replace=False))


def run_active_learning(
    active: ActiveArguments, task: ActiveTask, training_args: MarginTrainingArguments
) -> dict[str, Any]:
    """
    The loop: train, evaluate, acquire, `active.rounds` times, then train and evaluate once more.

    Returns:
        The record written to `active.json`: `labels` and `accuracy` per round (`active.metric`), every
        round's eval metrics, the initial and acquired pool indices, and the settings.
    """
    recipe = task.recipe
    pool_size = len(task.data.train)
    if active.labels_needed > pool_size:
        raise ValueError(
            f"initial_labels + rounds x query_size = {active.labels_needed} exceeds the pool of {pool_size} samples."
        )
    seed = training_args.seed
    labelled = initial_labelled(pool_size, active.initial_labels, seed)
    acquired: list[list[int]] = []
    labels, scores, metrics = [], [], []
    set_seed(seed)
    initial_state = None
    model = recipe.build_model(task.args, task.data)
    data = recipe.fit_data_to_model(task.args, task.data, model)
    scoring = recipe.scoring_dataset(data)
    if active.round_start == "initial":
        initial_state = copy.deepcopy(model.state_dict())
    for round_index in range(active.rounds + 1):
        if initial_state is not None and round_index > 0:
            model.load_state_dict(initial_state)  # every round from the same initial weights
        args = copy.deepcopy(training_args)
        trainer = recipe.make_trainer(task.args, args, model, data, labelled_subset(data.train, labelled.tolist()))
        trainer.train()
        round_metrics = trainer.evaluate()
        if active.metric not in round_metrics:
            raise ValueError(f"metric={active.metric!r} is not among the eval metrics {sorted(round_metrics)}.")
        labels.append(len(labelled))
        scores.append(float(round_metrics[active.metric]))
        metrics.append({k: v for k, v in round_metrics.items() if isinstance(v, (int, float))})
        if round_index == active.rounds:
            break
        unlabeled = np.setdiff1d(np.arange(pool_size), labelled)
        chosen = select_for_labelling(
            trainer,
            labelled_subset(scoring, unlabeled.tolist()),
            active.query_size,
            criterion=active.criterion,
            seed=seed * 1000 + round_index,  # the random control draws afresh each round
        )
        new = unlabeled[chosen.numpy()]
        acquired.append(new.tolist())
        labelled = np.sort(np.concatenate([labelled, new]))
        if trainer.is_world_process_zero():
            print(f"tasks.active: round {round_index}: {labels[-1]} labels -> {active.metric}={scores[-1]:.4f}")

    record = {
        **asdict(active),
        **data.description,
        "seed": seed,
        "pool_size": pool_size,
        "eval_size": len(data.eval),
        "labels": labels,
        "accuracy": scores,
        "metrics": metrics,
        "initial": initial_labelled(pool_size, active.initial_labels, seed).tolist(),
        "acquired": acquired,
    }
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "active.json").write_text(json.dumps(record, indent=1))
        title = f"{record.get('dataset_name') or record.get('task_name')}: {active.criterion}, seed {seed}"
        plot_learning_curves({active.criterion: (labels, scores, None)}, out / "active.png", title, active.metric)
        print(
            f"tasks.active: {labels} labels -> {active.metric} {[round(s, 4) for s in scores]} | {out / 'active.json'}"
        )
    return record


def plot_learning_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    path: str | Path,
    title: str,
    metric: str = "eval_accuracy",
) -> None:
    """One line per name of `curves` (`labels, mean, std or None`), a band of +-std where given; saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, mean, std) in curves.items():
        (line,) = ax.plot(x, mean, marker="o", label=name)
        if std is not None:
            lower, upper = np.asarray(mean) - np.asarray(std), np.asarray(mean) + np.asarray(std)
            ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str]) -> tuple[ActiveArguments, Any, MarginTrainingArguments]:
    """`--recipe` picks the recipe's argument dataclass; then all three parse from one command line."""
    recipe = next((argv[i + 1] for i, tok in enumerate(argv[:-1]) if tok == "--recipe"), None)
    recipe = recipe or next((tok.split("=", 1)[1] for tok in argv if tok.startswith("--recipe=")), None)
    parser = recipe_parser(
        (ActiveArguments, recipe_named(recipe).arguments, MarginTrainingArguments), "python -m tasks.active", __doc__
    )
    return parser.parse_args_into_dataclasses(args=list(argv), look_for_args_file=False)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the command line, load the recipe's data and run the loop; returns the `active.json` record."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if ("-h" in argv or "--help" in argv) and not any(tok.startswith("--recipe") for tok in argv):
        argv = ["--recipe", "image", *argv]  # the help of the image recipe's flags
    active, recipe_args, training_args = parse_args(argv)
    task = load_task(recipe_named(active.recipe), recipe_args, training_args)
    return run_active_learning(active, task, training_args)


if __name__ == "__main__":
    main()
