"""
The text-classification recipe (`tasks.text`) on files it writes itself: CSV, TSV, JSON, JSON Lines and Parquet
with string labels in three classes, short end-to-end runs with a tiny random BERT and the real MiniLM tokenizer,
and a clear error naming the flag for each kind of bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import EvalPrediction

from tasks.glue_metrics import compute_metrics_from_logits
from tasks.text import load_text_splits, macro_f1, main, parse_args, text_classification_metrics

TINY_BERT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37})
WORDS = {"pos": "good great fine", "neutral": "plain usual so-so", "neg": "bad awful poor"}


def reviews(n: int, seed: int) -> pd.DataFrame:
    """`n` rows of an `id`, a `review` built from its class's words, a `title`, and a string `sentiment`."""
    rng = np.random.default_rng(seed)
    labels = [("pos", "neutral", "neg")[i % 3] for i in range(n)]
    return pd.DataFrame(
        {
            "id": range(n),
            "review": [" ".join(rng.choice(WORDS[label].split(), size=4)) for label in labels],
            "title": ["NA" if i == 0 else f"title {i}" for i in range(n)],  # "NA" is a word, not a missing value
            "sentiment": labels,
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records")  # one JSON array of objects
    else:
        frame.to_parquet(path)
    return path


def data_flags(tmp_path: Path, extension: str, train: pd.DataFrame | None = None, dev: pd.DataFrame | None = None):
    train_file = write(reviews(48, 0) if train is None else train, tmp_path / f"train{extension}")
    dev_file = write(reviews(24, 1) if dev is None else dev, tmp_path / f"dev{extension}")
    return ["--train_file", str(train_file), "--validation_file", str(dev_file)]


def run_flags(tmp_path: Path, *flags: str) -> list[str]:
    return [
        *("--text_column_names", "review", "--label_column_name", "sentiment", "--output_dir", str(tmp_path / "out")),
        *("--random_init_config", TINY_BERT, "--max_seq_length", "32", "--per_device_train_batch_size", "8"),
        *("--per_device_eval_batch_size", "16", "--num_train_epochs", "1", "--learning_rate", "1e-3"),
        *("--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true"),
        *("--seed", "0"),
        *flags,
    ]


def splits_of(argv: list[str]):
    return load_text_splits(parse_args(argv)[0])


# ----------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("extension", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_file_format_loads_with_sorted_string_classes(tmp_path, extension):
    splits = splits_of(run_flags(tmp_path, *data_flags(tmp_path, extension)))
    assert splits["train"].features["label"].names == ["neg", "neutral", "pos"]  # sorted: ids 0, 1, 2
    assert splits["train"].column_names == ["review", "label"]
    assert (len(splits["train"]), len(splits["validation"])) == (48, 24)
    assert splits["train"]["label"][:3] == [2, 1, 0]  # pos, neutral, neg
    assert splits["train"]["review"][0] == reviews(48, 0)["review"][0]


def test_sentence_pairs_integer_labels_and_sample_limits(tmp_path):
    train, dev = reviews(48, 0), reviews(24, 1)
    train["stars"], dev["stars"] = train["sentiment"].map({"neg": 1, "neutral": 3, "pos": 5}), 3
    argv = run_flags(tmp_path, *data_flags(tmp_path, ".csv", train, dev), "--max_train_samples", "10")
    argv += ["--text_column_names", "title,review", "--label_column_name", "stars", "--max_eval_samples", "5"]
    splits = splits_of(argv)
    assert splits["train"].column_names == ["title", "review", "label"]
    assert splits["train"]["title"][0] == "NA"  # kept as text
    assert splits["train"].features["label"].names == ["1", "3", "5"]
    assert splits["train"]["label"][:3] == [2, 1, 0] and set(splits["validation"]["label"]) == {1}
    assert (len(splits["train"]), len(splits["validation"])) == (10, 5)  # the first rows


def test_validation_split_fraction_holds_out_a_seeded_part_of_train(tmp_path):
    train_file = write(reviews(40, 0), tmp_path / "train.csv")
    argv = run_flags(tmp_path, "--train_file", str(train_file), "--validation_split_fraction", "0.25")
    splits = splits_of(argv)
    assert (len(splits["train"]), len(splits["validation"])) == (30, 10)
    assert splits_of(argv)["validation"]["review"] == splits["validation"]["review"]  # seeded
    other = splits_of([*argv, "--validation_split_seed", "7"])["validation"]["review"]
    assert other != splits["validation"]["review"]


def test_a_datasets_folder_with_train_and_test_files(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    write(reviews(30, 0), folder / "train.csv")
    write(reviews(12, 1), folder / "test.csv")  # no validation split: test is evaluated
    splits = splits_of(run_flags(tmp_path, "--dataset_name", str(folder)))
    assert (len(splits["train"]), len(splits["validation"])) == (30, 12)
    assert splits["validation"].features["label"].names == ["neg", "neutral", "pos"]


def test_metrics_accuracy_and_macro_f1():
    predictions, references = [0, 1, 2, 2], [0, 1, 1, 2]  # F1 per class: 1, 2/3, 2/3
    assert macro_f1(predictions, references) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert text_classification_metrics(predictions, references) == pytest.approx(
        {"accuracy": 0.75, "macro_f1": (1 + 4 / 3) / 3}
    )


# ------------------------------------------------------------------------------------------- bad input


def test_a_missing_column_names_the_flag_and_lists_the_columns(tmp_path):
    files = data_flags(tmp_path, ".csv")
    with pytest.raises(ValueError, match=r"--text_column_names: .*train\.csv has no column \['body'\]; its columns: "
                       r"\['id', 'review', 'title', 'sentiment'\]"):  # fmt: skip
        splits_of(run_flags(tmp_path, *files, "--text_column_names", "body"))
    with pytest.raises(ValueError, match=r"--label_column_name: .*has no column \['label'\]; its columns:"):
        splits_of(run_flags(tmp_path, *files, "--label_column_name", "label"))


def test_one_class_only_is_refused(tmp_path):
    train = reviews(12, 0).assign(sentiment="pos")
    with pytest.raises(ValueError, match=r"--label_column_name 'sentiment': .* has a single class \['pos'\]"):
        splits_of(run_flags(tmp_path, *data_flags(tmp_path, ".csv", train, reviews(6, 1).assign(sentiment="pos"))))


def test_a_validation_label_unseen_in_train_is_refused(tmp_path):
    dev = reviews(6, 1)
    dev.loc[2, "sentiment"] = "mixed"
    with pytest.raises(ValueError, match=r"--label_column_name 'sentiment': --validation_file .* has labels "
                       r"\['mixed'\] that --train_file .* has not"):  # fmt: skip
        splits_of(run_flags(tmp_path, *data_flags(tmp_path, ".csv", dev=dev)))


def test_empty_files_and_files_without_rows_are_refused(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    dev = write(reviews(6, 1), tmp_path / "dev.csv")
    with pytest.raises(ValueError, match=r"--train_file .*empty\.csv is empty"):
        splits_of(run_flags(tmp_path, "--train_file", str(tmp_path / "empty.csv"), "--validation_file", str(dev)))
    (tmp_path / "header.csv").write_text("review,sentiment\n")
    with pytest.raises(ValueError, match=r"--train_file .*header\.csv has no rows"):
        splits_of(run_flags(tmp_path, "--train_file", str(tmp_path / "header.csv"), "--validation_file", str(dev)))
    with pytest.raises(FileNotFoundError, match=r"--validation_file .*nowhere\.csv does not exist"):
        splits_of(run_flags(tmp_path, "--train_file", str(dev), "--validation_file", str(tmp_path / "nowhere.csv")))


def test_bad_flags_fail_while_parsing(tmp_path):
    train = str(write(reviews(6, 0), tmp_path / "train.csv"))
    with pytest.raises(ValueError, match=r"--train_file .*train\.txt: unknown extension '\.txt'; use \['\.csv'"):
        parse_args(run_flags(tmp_path, "--train_file", str(tmp_path / "train.txt")))
    with pytest.raises(ValueError, match="either --train_file .* or --dataset_name"):
        parse_args(run_flags(tmp_path))
    with pytest.raises(ValueError, match="--text_column_names must name one column or two"):
        parse_args(run_flags(tmp_path, "--train_file", train, "--text_column_names", "a,b,c"))
    with pytest.raises(ValueError, match=r"--validation_split_fraction must be in \(0, 1\)"):
        parse_args(run_flags(tmp_path, "--train_file", train, "--validation_split_fraction", "1.5"))


def test_no_validation_split_is_an_error_unless_carved(tmp_path):
    train = str(write(reviews(6, 0), tmp_path / "train.csv"))
    with pytest.raises(ValueError, match=r"train\.csv has no validation split: give --validation_file, or "
                       r"--validation_split_fraction"):  # fmt: skip
        splits_of(run_flags(tmp_path, "--train_file", train))


def test_float_labels_are_refused(tmp_path):
    train, dev = reviews(12, 0).assign(sentiment=0.5), reviews(6, 1).assign(sentiment=0.5)
    with pytest.raises(ValueError, match=r"--label_column_name 'sentiment': the labels are .*float64.*classification"):
        splits_of(run_flags(tmp_path, *data_flags(tmp_path, ".csv", train, dev)))


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("extension", [".csv", ".jsonl", ".parquet"])
def test_three_class_string_labels_end_to_end(tmp_path, extension, capsys):
    record = main(
        run_flags(tmp_path, *data_flags(tmp_path, extension), "--selection", "mms", "--selection_oversample", "2")
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics == record
    assert metrics["label_names"] == ["neg", "neutral", "pos"]
    assert (metrics["train_samples"], metrics["eval_samples"]) == (48, 24)
    # 48 samples in pools of k * b = 2 * 8: three optimizer steps in the epoch
    assert metrics["train_steps"] == 3 and metrics["selection"] == "mms"
    assert metrics["eval_accuracy"] * 24 == pytest.approx(round(metrics["eval_accuracy"] * 24))
    assert 0.0 <= metrics["eval_macro_f1"] <= 1.0
    assert math.isfinite(metrics["train_loss"]) and metrics["train_runtime"] > 0
    line = capsys.readouterr().out
    assert f"tasks.text: {tmp_path / f'train{extension}'} (48 train / 24 eval): eval_accuracy=" in line
    assert ", eval_macro_f1=" in line and "| MMS k=2 |" in line


def test_the_model_saved_with_its_class_names(tmp_path):
    main(run_flags(tmp_path, *data_flags(tmp_path, ".csv"), "--save_strategy", "steps", "--save_steps", "1000"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
    assert config["label2id"] == {"neg": 0, "neutral": 1, "pos": 2}
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)


def test_compute_metrics_reads_logits():
    compute = compute_metrics_from_logits(text_classification_metrics)
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    assert compute(EvalPrediction(predictions=logits, label_ids=np.array([0, 2, 2]))) == pytest.approx(
        {"accuracy": 2 / 3, "macro_f1": (1 + 0 + 2 / 3) / 3}
    )


def test_rows_without_a_label_and_validation_file_without_train_file(tmp_path):
    train = reviews(12, 0).astype({"sentiment": object})
    train.loc[3, "sentiment"] = ""
    with pytest.raises(ValueError, match=r"--label_column_name 'sentiment': --train_file .* has rows without a label"):
        splits_of(run_flags(tmp_path, *data_flags(tmp_path, ".csv", train)))
    with pytest.raises(ValueError, match="--validation_file goes with --train_file"):
        parse_args(run_flags(tmp_path, "--dataset_name", "x", "--validation_file", str(tmp_path / "dev.csv")))


def test_active_learning_on_the_text_recipe(tmp_path):
    from tasks.active import main as active_main

    argv = run_flags(tmp_path, *data_flags(tmp_path, ".csv"), "--max_steps", "2")
    record = active_main(["--recipe", "text", *argv, "--initial_labels", "9", "--query_size", "6", "--rounds", "1"])
    assert record["labels"] == [9, 15] and len(record["acquired"][0]) == 6
    assert record["dataset_name"] == str(tmp_path / "train.csv") and record["pool_size"] == 48
    assert (tmp_path / "out" / "active.json").is_file()
