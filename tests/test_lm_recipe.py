"""The causal-LM recipe (`tasks.lm`): a small decoder on GLUE sentences or a text file, through `MarginTrainer` or
TRL's `SFTTrainer` with the margin mixin, pruned by the token scores; and its bad input."""

from __future__ import annotations

import json
import math

import pytest

from tasks.lm import main
from tasks.paths import SHARED_DATA

TINY = json.dumps({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "num_key_value_heads": 2})  # fmt: skip


def run(tmp_path, *extra: str) -> dict:
    return main(
        [
            "--output_dir", str(tmp_path / "out"), "--model_config", TINY, "--max_seq_length", "24",
            "--max_train_samples", "64", "--max_eval_samples", "16", "--per_device_train_batch_size", "16",
            "--num_train_epochs", "3", "--learning_rate", "1e-2", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1", *extra,
        ]
    )  # fmt: skip


@pytest.mark.parametrize("trainer", ["trainer", "sft"])
def test_the_lm_recipe_prunes_glue_sentences_through_either_trainer(tmp_path, trainer):
    glue = ["--glue_task", "sst2", "--data_dir", str(SHARED_DATA / "glue")]
    stock = run(tmp_path / "stock", *glue, "--trainer", trainer)
    pruned = run(tmp_path / "pruned", *glue, "--trainer", trainer, "--pruning", "loss")
    assert stock["train_steps"] == 3 * 4 and pruned["train_steps"] < stock["train_steps"]  # 4 steps a full pass
    assert pruned["pruning"] == "loss" and pruned["trainer"] == trainer
    for record in (stock, pruned):
        assert record["eval_perplexity"] == pytest.approx(math.exp(record["eval_loss"]))
        assert record["train_loss"] < math.log(30522)  # it learned something of the corpus


def test_the_lm_recipe_reads_a_text_file_and_names_bad_input(tmp_path):
    lines = "\n".join(f"the film number {i} is {'good' if i % 2 else 'bad'}" for i in range(80))
    (tmp_path / "train.txt").write_text(lines)
    (tmp_path / "dev.txt").write_text(lines[:400])
    record = run(tmp_path, "--train_file", str(tmp_path / "train.txt"), "--validation_file", str(tmp_path / "dev.txt"))
    assert record["train_steps"] == 3 * 4  # the first 64 of the 80 lines: 4 batches of 16 a pass
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="--train_file .* holds no text"):
        run(tmp_path, "--train_file", str(tmp_path / "empty.txt"), "--validation_file", str(tmp_path / "dev.txt"))
    with pytest.raises(ValueError, match="either --train_file .* or --glue_task"):
        run(tmp_path)
    with pytest.raises(ValueError, match="--validation_file"):
        run(tmp_path, "--train_file", str(tmp_path / "train.txt"))
