"""Every benchmark setting, every variant and every line of the suite, as data.

The runner (`tasks.bench.run`), the report (what is plotted) and `make bench` / `make bench-quick` (through
`python -m tasks.bench suite`) all read this module, so adding a variant or a grid line is one edit here.
Nothing in it runs anything: it imports only the standard library and `tasks.paths`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.paths import SHARED_DATA

KINDS = ("tta", "mmr", "early", "short", "prune")  # the grid benchmarks: recipe runs, one per variant and seed
TOOLS = ("overhead", "scoring", "loader", "lm_step")  # the micro-benchmarks: one result per device, no seeds


@dataclass(frozen=True)
class Setting:
    """One benchmark problem: a recipe and its flags, the same for every variant."""

    recipe: str  # "image", "glue" or "lm"
    argv: list[str]
    metric: str = "eval_accuracy"
    quick_argv: list[str] = field(default_factory=list)  # appended in --quick mode
    note: str = ""
    higher_is_better: bool = True  # False for a loss: a run reaches a target by going below it

    @property
    def max_steps(self) -> int:
        return int(self.argv[self.argv.index("--max_steps") + 1])


def _image(dataset: str, model: str, flags: str, quick: str, note: str) -> Setting:
    argv = ["--dataset_name", dataset, "--model_name_or_path", model, *shlex.split(flags)]
    return Setting("image", argv, quick_argv=shlex.split(quick), note=note)


def _glue(task: str, flags: str, quick: str, note: str, metric: str = "eval_accuracy") -> Setting:
    argv = ["--task_name", task, "--data_dir", str(SHARED_DATA / "glue"), *shlex.split(flags)]
    return Setting("glue", argv, metric=metric, quick_argv=shlex.split(quick), note=note)


def _sst2_prune(passes: int, eval_steps: int, samples: int = 1200) -> Setting:
    """The epoch-pruning text recipe (pretrained MiniLM on an SST-2 subset of `samples`) for `passes` passes."""
    batch = 32
    return _glue(
        "sst2",
        f"--max_train_samples {samples} --per_device_train_batch_size {batch} --max_seq_length 64 "
        f"--num_train_epochs {passes} --eval_steps {eval_steps} --learning_rate 5e-5 --warmup_steps 0.06",
        "--max_train_samples 256 --max_eval_samples 64 --num_train_epochs 2 --eval_steps 4",
        f"GLUE SST-2, {samples:,}-sentence train subset, full dev (872); pretrained all-MiniLM-L6-v2, batch 32, seq "
        f"64, AdamW 5e-5, 6% warm-up, linear decay, {passes} passes ({-(-samples // batch) * passes} steps "
        "unpruned).",
    )


def _lm(flags: str, quick: str, note: str) -> Setting:
    argv = ["--glue_task", "sst2", "--data_dir", str(SHARED_DATA / "glue"), *shlex.split(flags)]
    return Setting("lm", argv, metric="eval_loss", quick_argv=shlex.split(quick), note=note, higher_is_better=False)


_LM_SST2 = (
    "--max_train_samples 2000 --per_device_train_batch_size 32 --max_seq_length 64 --num_train_epochs 15 "
    "--eval_steps 63 --learning_rate 2e-3 --warmup_steps 0.05 --lr_scheduler_type cosine --weight_decay 0.1"
)
_QUICK_LM = "--max_train_samples 128 --max_eval_samples 64 --num_train_epochs 3 --eval_steps 4"
_LM_SST2_NOTE = (
    "GLUE SST-2 sentences as a corpus: the first 2,000 train sentences, the 872 dev sentences held out; a Llama "
    "decoder from scratch (4 layers, hidden 128, 4 heads, MiniLM's tokenizer, tied embeddings, 5.0M "
    "parameters), batch 32, seq 64, AdamW 2e-3, 5% warm-up, cosine, weight decay 0.1, 15 passes (945 steps "
    "unpruned). Metric: eval_loss (lower is better; perplexity = exp)."
)
_SGD = "--optim sgd --optim_args momentum=0.9 --weight_decay 1e-4"
# the trained-to-a-plateau recipe on a 10k-image subset (fmnist_long, cifar10_cpu); the settings add --max_steps
_SUBSET_10K = (
    "--max_train_samples 10000 --max_eval_samples 2000 --per_device_train_batch_size 64 --eval_steps 100 "
    "--learning_rate 0.1 --warmup_steps 40 --lr_scheduler_type cosine --optim sgd --optim_args momentum=0.9 "
    "--weight_decay 5e-4"
)
_QUICK_IMAGE = "--max_train_samples 2000 --max_eval_samples 500 --max_steps 40 --eval_steps 20 --bf16 false"
_QUICK_GLUE = "--max_train_samples 256 --max_eval_samples 64 --max_steps 4 --eval_steps 2 --max_seq_length 64"
SETTINGS: dict[str, Setting] = {
    # CPU scale: 400 steps of batch 64 = 2.56 passes over a 10k-image Fashion-MNIST subset
    "fmnist": _image(
        "fashion_mnist",
        "cifar_resnet20",
        f"--max_train_samples 10000 --max_eval_samples 2000 --per_device_train_batch_size 64 --max_steps 400 "
        f"--eval_steps 50 --learning_rate 0.05 --lr_scheduler_type cosine {_SGD}",
        _QUICK_IMAGE,
        "Fashion-MNIST, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20 (1 channel), batch 64, "
        "SGD lr 0.05 cosine, 400 steps.",
    ),
    # CPU scale, trained to a plateau: 1,200 steps of batch 64 = 7.7 passes over the same 10k subset
    "fmnist_long": _image(
        "fashion_mnist",
        "cifar_resnet20",
        f"{_SUBSET_10K} --max_steps 1200",
        _QUICK_IMAGE,
        "Fashion-MNIST, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20 (1 channel), batch 64, "
        "SGD lr 0.1 (40 warm-up steps) cosine, weight decay 5e-4, 1,200 steps (7.7 passes).",
    ),
    # CPU scale, CIFAR-10: the fmnist_long recipe on a 10k-image CIFAR-10 subset, 800 steps (5.1 passes)
    "cifar10_cpu": _image(
        "cifar10",
        "cifar_resnet20",
        f"{_SUBSET_10K} --max_steps 800",
        _QUICK_IMAGE,
        "CIFAR-10, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20, batch 64, SGD lr 0.1 (40 warm-up "
        "steps) cosine, weight decay 5e-4, 800 steps (5.1 passes).",
    ),
    # seconds-scale: scikit-learn's digits (used by the tests of this package)
    "digits": _image(
        "digits",
        "cifar_resnet20",
        f"--per_device_train_batch_size 32 --max_steps 60 --eval_steps 20 --learning_rate 0.05 {_SGD}",
        "--max_steps 6 --eval_steps 3",
        "scikit-learn digits (1,437 train / 360 eval 8x8), CIFAR ResNet-20, batch 32, SGD lr 0.05, 60 steps.",
    ),
    # GPU scale: full CIFAR-10, ResNet-20, 10 sample epochs of batch 128 = 3,910 steps
    "cifar10": _image(
        "cifar10",
        "cifar_resnet20",
        f"--per_device_train_batch_size 128 --max_steps 3910 --eval_steps 391 --learning_rate 0.1 "
        f"--lr_scheduler_type cosine {_SGD} --dataloader_num_workers 4 --bf16 true",
        _QUICK_IMAGE,
        "CIFAR-10 (50,000 train / 10,000 test), CIFAR ResNet-20, batch 128, SGD lr 0.1 cosine, 3,910 steps "
        "(10 sample epochs), bf16 autocast.",
    ),
    # CPU scale, text: pretrained MiniLM, batch 32 x seq 128, 120 steps (~1 pass over MRPC)
    "mrpc": _glue(
        "mrpc",
        "--per_device_train_batch_size 32 --max_seq_length 128 --max_steps 120 --eval_steps 20 "
        "--learning_rate 5e-5 --warmup_steps 12",
        _QUICK_GLUE,
        "GLUE MRPC (3,668 train / 408 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 128, AdamW 5e-5, 120 steps.",
    ),
    # the usual GLUE fine-tuning length: 3 epochs of MRPC (345 steps)
    "mrpc_3ep": _glue(
        "mrpc",
        "--per_device_train_batch_size 32 --max_seq_length 128 --max_steps 345 --eval_steps 23 "
        "--learning_rate 5e-5 --warmup_steps 35",
        _QUICK_GLUE,
        "GLUE MRPC (3,668 train / 408 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 128, AdamW 5e-5, "
        "345 steps (3 epochs).",
    ),
    "rte": _glue(
        "rte",
        "--per_device_train_batch_size 32 --max_seq_length 128 --max_steps 120 --eval_steps 20 "
        "--learning_rate 5e-5 --warmup_steps 12",
        _QUICK_GLUE,
        "GLUE RTE (2,490 train / 277 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 128, AdamW 5e-5, 120 steps.",
    ),
    # CPU scale, SST-2: 300 steps x 32 = 9,600 of the 67k training sentences (one seventh of a pass)
    "sst2_cpu": _glue(
        "sst2",
        "--per_device_train_batch_size 32 --max_seq_length 64 --max_steps 300 --eval_steps 50 "
        "--learning_rate 5e-5 --warmup_steps 30",
        _QUICK_GLUE,
        "GLUE SST-2 (67,349 train / 872 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 64, AdamW 5e-5, "
        "300 steps (a seventh of a pass).",
    ),
    # GPU scale, text: 2,000 steps x 32 = ~1 pass over SST-2
    "sst2": _glue(
        "sst2",
        "--per_device_train_batch_size 32 --max_seq_length 64 --max_steps 2000 --eval_steps 200 "
        "--learning_rate 5e-5 --warmup_steps 100 --bf16 true",
        _QUICK_GLUE + " --bf16 false",
        "GLUE SST-2 (67,349 train / 872 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 64, AdamW 5e-5, bf16, "
        "2,000 steps.",
    ),
    # GPU scale, epoch pruning: full CIFAR-10, ResNet-20, 30 passes of batch 128 (11,730 steps unpruned). The
    # Trainer's NaN filter on the logged loss reads it on the host every step; off here, for every variant alike
    "cifar10_prune_gpu": _image(
        "cifar10",
        "cifar_resnet20",
        "--max_train_samples 50000 --max_eval_samples 10000 --per_device_train_batch_size 128 --num_train_epochs 30 "
        "--eval_steps 1173 --learning_rate 0.1 --warmup_steps 0.025 --lr_scheduler_type cosine --optim sgd "
        "--optim_args momentum=0.9 --weight_decay 5e-4 --bf16 true --dataloader_num_workers 8 "
        "--logging_nan_inf_filter false",
        "--max_train_samples 640 --max_eval_samples 200 --num_train_epochs 3 --eval_steps 10 --bf16 false "
        "--dataloader_num_workers 0",
        "CIFAR-10 (50,000 train / 10,000 test), CIFAR ResNet-20, batch 128, SGD lr 0.1 (2.5% warm-up) cosine, weight "
        "decay 5e-4, bf16 autocast, 8 loader workers, 30 passes (11,730 steps unpruned).",
    ),
    # Epoch pruning of a causal LM, in the regime of InfoBatch's LLaMA result (many passes over a small set): a
    # 4-layer decoder (hidden 128, 5.0M parameters, 3.9M of them the tied embeddings of MiniLM's 30,522-entry
    # vocabulary) trained from scratch on 2,000 SST-2 sentences for 15 passes of 63 steps
    "lm_sst2": _lm(_LM_SST2, _QUICK_LM, _LM_SST2_NOTE),
    # the same through TRL's SFTTrainer with the margin mixin (SFTTrainer tokenises and appends the end token itself)
    "lm_sst2_sft": _lm(
        _LM_SST2 + " --trainer sft",
        _QUICK_LM,
        _LM_SST2_NOTE + " Through TRL's SFTTrainer with MarginTrainerMixin (`--trainer sft`).",
    ),
    # Epoch pruning, vision: multi-epoch training on a 3k-image Fashion-MNIST subset (20 passes)
    "fmnist_prune": _image(
        "fashion_mnist",
        "cifar_resnet20",
        "--max_train_samples 3000 --max_eval_samples 1000 --per_device_train_batch_size 64 --num_train_epochs 20 "
        "--eval_steps 47 --learning_rate 0.1 --warmup_steps 24 --lr_scheduler_type cosine --optim sgd "
        "--optim_args momentum=0.9 --weight_decay 5e-4",
        "--max_train_samples 640 --max_eval_samples 200 --num_train_epochs 3 --eval_steps 10",
        "Fashion-MNIST, 3,000-image train subset, 1,000 test images; CIFAR ResNet-20 (1 channel), batch 64, SGD lr "
        "0.1 (24 warm-up steps) cosine, weight decay 5e-4, 20 passes (940 steps unpruned).",
    ),
    # Epoch pruning, vision, trained far past the point where most samples are learned: fmnist_prune for 60 passes
    "fmnist_prune_long": _image(
        "fashion_mnist",
        "cifar_resnet20",
        "--max_train_samples 3000 --max_eval_samples 1000 --per_device_train_batch_size 64 --num_train_epochs 60 "
        "--eval_steps 141 --learning_rate 0.1 --warmup_steps 0.025 --lr_scheduler_type cosine --optim sgd "
        "--optim_args momentum=0.9 --weight_decay 5e-4",
        "--max_train_samples 640 --max_eval_samples 200 --num_train_epochs 3 --eval_steps 10",
        "Fashion-MNIST, 3,000-image train subset, 1,000 test images; CIFAR ResNet-20 (1 channel), batch 64, SGD lr "
        "0.1 (2.5% warm-up) cosine, weight decay 5e-4, 60 passes (2,820 steps unpruned).",
    ),
    # Epoch pruning, vision: CIFAR-10, the 10k-image subset for 25 passes (3,925 steps unpruned)
    "cifar10_prune": _image(
        "cifar10",
        "cifar_resnet20",
        "--max_train_samples 10000 --max_eval_samples 2000 --per_device_train_batch_size 64 --num_train_epochs 25 "
        "--eval_steps 157 --learning_rate 0.1 --warmup_steps 0.025 --lr_scheduler_type cosine --optim sgd "
        "--optim_args momentum=0.9 --weight_decay 5e-4",
        "--max_train_samples 640 --max_eval_samples 200 --num_train_epochs 3 --eval_steps 10",
        "CIFAR-10, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20, batch 64, SGD lr 0.1 (2.5% "
        "warm-up) cosine, weight decay 5e-4, 25 passes (3,925 steps unpruned).",
    ),
    # Epoch pruning, text: the usual fine-tuning recipe (AdamW, warm-up, linear decay) on a 1,200-sentence SST-2
    # subset for 5 passes
    "sst2_prune": _sst2_prune(5, eval_steps=19),
    # trained past the plateau (sst2_prune's baseline is level from its third pass): 8 passes
    "sst2_prune_long": _sst2_prune(8, eval_steps=19),
    # trained long past the plateau: sst2_prune_long's baseline still gains in its last passes; evaluated once a pass
    "sst2_prune_16ep": _sst2_prune(16, eval_steps=38),
    # where users live: the usual 3-epoch fine-tune, on 8,000 sentences (250 steps a pass)
    "sst2_prune_3ep_8k": _sst2_prune(3, eval_steps=125, samples=8000),
}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---------------------------------------------------------------------------------------------------------------
# Variants: name -> the flags added to the setting's. Every grid has a "baseline" that trains on every sample.

_BF16 = ["--selection_scoring_dtype", "bfloat16"]
_CHUNK32 = ["--selection_scoring_batch_size", "32"]
CRITERIA = ("mms", "loss", "entropy")  # the scored criteria; "uniform" draws b of the pool at random


def pool(criterion: str, k: float, *extra: str) -> list[str]:
    """Flags for choosing b of a pool of k*b by `criterion`."""
    return ["--selection", criterion, "--selection_oversample", f"{k:g}", *extra]


# Cheaper selections (run with --only). Cached margins (no pool, no scoring forward): the hard share h is always
# trained, easy samples at rate r with loss x 1/r; a pass costs h + (1 - h) r of a full pass: 0.625 for the
# defaults, 0.325 for h25_r10. `_until50` selects for the first half of the steps only; `_notrim` keeps the
# pool's padding in the selected text batch; `_compile` compiles the scoring forward.
CHEAP_VARIANTS = {
    "mms_cached": ["--selection", "mms_cached"],
    "mms_cached_h25_r10": [
        "--selection", "mms_cached", "--selection_hard_fraction", "0.25", "--selection_easy_rate", "0.1"
    ],
    # text only: the selected batch keeps the pool's padded length (the behaviour before selection_trim_padding)
    "mms_k2_bf16_notrim": pool("mms", 2, *_BF16, "--selection_trim_padding", "false"),
    "mms_k2_bf16_compile": pool("mms", 2, *_BF16, "--selection_scoring_compile", "true"),
    "mms_k2_bf16_chunk32_compile": pool("mms", 2, *_BF16, *_CHUNK32, "--selection_scoring_compile", "true"),
    "mms_k2_bf16_until50": pool("mms", 2, *_BF16, "--selection_until", "0.5"),
}  # fmt: skip


def tta_variants(ks: list[float]) -> dict[str, list[str]]:
    """
    The baseline; per k, uniform choice from the pool and each scored criterion in three scoring set-ups:
    fp32, `_bf16` (the pool scored under bf16 autocast) and `_bf16_chunk32` (also in length-sorted micro-batches
    of 32, each cut to its own padding); then the cheaper selections.
    """
    variants = {"baseline": ["--selection", "none"]}
    for k in ks:
        variants[f"uniform_k{k:g}"] = pool("uniform", k)
        for criterion in CRITERIA:
            variants[f"{criterion}_k{k:g}"] = pool(criterion, k)
            variants[f"{criterion}_k{k:g}_bf16"] = pool(criterion, k, *_BF16)
            variants[f"{criterion}_k{k:g}_bf16_chunk32"] = pool(criterion, k, *_BF16, *_CHUNK32)
    variants.update(CHEAP_VARIANTS)
    return variants


def short_variants(setting: Setting, share: float = 0.6) -> dict[str, list[str]]:
    """
    A run with a decaying schedule gains most of its accuracy as the learning rate decays, at its end, so at equal
    length no variant can reach the baseline's final accuracy much sooner. These compress the whole schedule to
    `share` of the setting's steps: the baseline so compressed is the control; cached selection costs what a
    plain step costs, so a compressed cached run that reaches the full baseline's accuracy saves the difference.
    """
    full = setting.max_steps
    steps, tag = str(round(share * full)), f"{share:g}x"
    cached = CHEAP_VARIANTS["mms_cached"]
    # a pool step costs more than a plain one (see BENCHMARKS.md, overhead), so the pool runs get a shorter run
    pool_steps = str(round(0.5 * full))
    return {
        "baseline": [],
        f"baseline_{tag}": ["--max_steps", steps],
        f"mms_cached_{tag}": [*cached, "--max_steps", steps],
        f"mms_cached_biased_{tag}": [*cached, "--selection_easy_rescale", "false", "--max_steps", steps],
        "baseline_0.5x": ["--max_steps", pool_steps],
        "mms_k2_bf16_0.5x": pool("mms", 2, *_BF16, "--max_steps", pool_steps),
    }


# The seeds' early learning-rate drop (drops at 80/87.5/95% of the run, as the ResNet-44 preset's 32/35/38
# of 40 epochs) on a run 0.4x as long, against the baseline's full run with drops at 50/75%.
_FULL_DROPS = ["--lr_scheduler_type", "constant", "--lr_drop_unit", "fraction", "--lr_drops", "0.5,0.75"]
_EARLY_DROPS = ["--lr_scheduler_type", "constant", "--lr_drop_unit", "fraction", "--lr_drops", "0.8,0.875,0.95"]
EARLY_DROP_VARIANTS = {
    "baseline": _FULL_DROPS,
    "baseline_early_0.4x": [*_EARLY_DROPS, "--max_steps", "480"],
    "mms_k4_bf16_early_0.4x": pool("mms", 4, *_BF16, *_EARLY_DROPS, "--max_steps", "480"),
}


MMR_VARIANTS = {
    "baseline": [],
    "mmr_const": ["--mmr_alpha", "1e-4"],
    "mmr_ramp": ["--mmr_alpha", "1e-5", "--mmr_alpha_end", "1e-3"],
}

# Epoch pruning: every criterion at one pruning level (20% hard, 75% of the easy dropped: a pruned pass keeps 40%),
# and the control every pruning claim must beat: all the data for as many optimizer steps, schedule compressed.
# Two more levels run only when named with --only: the harsher one (90% of the easy dropped: a pass keeps 28%),
# because with few passes the first and the annealed passes are full, and 40% cannot bring a 5-pass run under 0.6x
# the steps; the gentler one (62.5% dropped: a pass keeps 50%), which brings a 60-pass run to 0.58x, not 0.49x.
PRUNING_LEVELS = {"": (0.2, 0.75), "_keep28": (0.2, 0.9), "_keep50": (0.2, 0.625)}
PRUNING_CRITERIA = ("margin", "mms", "loss", "random")  # the fixed-quota grid; each must be one of hf_margin's
# also on request: the scored criteria at the default level with the kept easy samples at weight 1, not up-weighted
UNWEIGHTED = "_unweighted"
UNWEIGHTED_RUNS = ("prune_margin_unweighted", "prune_loss_unweighted")
# The rules that decide from the scores how much to drop, at their defaults: adaptive ("learned") by margin and by
# loss, and InfoBatch's own rule (drop each sample below the mean loss with probability 0.5); then the shorter
# schedule that takes, seed by seed, as many optimizer steps as adaptive margin pruning took.
ADAPTIVE_RUNS = {
    "prune_margin_learned": ["--pruning", "margin", "--pruning_rule", "learned"],
    "prune_loss_learned": ["--pruning", "loss", "--pruning_rule", "learned"],
    "prune_loss_infobatch": ["--pruning", "loss", "--pruning_rule", "infobatch"],
    "baseline_short_learned": ["--max_steps", "{steps_of:prune_margin_learned}"],
}
# run only when --only names them
ON_REQUEST_SUFFIXES = (*(suffix for suffix in PRUNING_LEVELS if suffix), UNWEIGHTED, "_learned", "_infobatch")
STEPS_OF = re.compile(r"^\{steps_of:(\w+)\}$")


def prune_variants(setting: Setting) -> dict[str, list[str]]:
    from hf_margin.selection import pruning_schedule  # torch: imported only when a pruning grid is built

    argv = setting.argv
    samples, passes = int(_flag(argv, "--max_train_samples")), int(_flag(argv, "--num_train_epochs"))
    batch = int(_flag(argv, "--per_device_train_batch_size"))
    variants = {"baseline": []}
    for suffix, (hard, ratio) in PRUNING_LEVELS.items():
        level = ["--pruning_rule", "fixed", "--pruning_hard_fraction", str(hard), "--pruning_ratio", str(ratio)]
        variants.update({f"prune_{c}{suffix}": ["--pruning", c, *level] for c in PRUNING_CRITERIA})
        lengths = pruning_schedule(samples, passes, hard, ratio, 0.125, batch).lengths
        share = sum(lengths) / (samples * passes)  # of the unpruned run's draws
        variants[f"baseline_short{suffix}"] = ["--num_train_epochs", f"{passes * share:.4f}"]
    for name in UNWEIGHTED_RUNS:  # the default level's runs, their kept easy samples at weight 1
        variants[name] = [*variants[name.removesuffix(UNWEIGHTED)], "--pruning_rescale", "false"]
    variants.update(ADAPTIVE_RUNS)
    return variants


def resolve_flags(flags: list[str], steps_of: Callable[[str], int]) -> list[str]:
    """A variant's flags with each `{steps_of:RUN}` replaced by the optimizer steps `RUN` took (same seed)."""
    return [str(steps_of(match.group(1))) if (match := STEPS_OF.match(flag)) else flag for flag in flags]


DEFAULT_KS = [2.0, 4.0, 10.0]
DEFAULT_SEEDS = [0, 1, 2]


def variants_of(kind: str, setting: Setting, ks: list[float] | None = None) -> dict[str, list[str]]:
    """Every variant a grid of `kind` can run on `setting` (tta: at the pool factors `ks`)."""
    if kind == "tta":
        return tta_variants(DEFAULT_KS if ks is None else ks)
    if kind == "mmr":
        return dict(MMR_VARIANTS)
    if kind == "early":
        return dict(EARLY_DROP_VARIANTS)
    if kind == "short":
        return short_variants(setting)
    if kind == "prune":
        return prune_variants(setting)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def select_variants(
    kind: str, setting: Setting, ks: list[float] | None, only: list[str] | None
) -> dict[str, list[str]]:
    """The variants a grid runs: all of its kind, or the baseline and `only`; a name not among them is refused."""
    variants = variants_of(kind, setting, ks)
    if not only:
        return {name: flags for name, flags in variants.items() if not name.endswith(ON_REQUEST_SUFFIXES)}
    unknown = sorted(set(only) - set(variants))
    if unknown:
        shown = DEFAULT_KS if ks is None else ks
        hint = f" with --ks {' '.join(f'{k:g}' for k in shown)}" if kind == "tta" else ""
        raise ValueError(f"--only names no {kind} variant{hint}: {unknown}; they are: {', '.join(variants)}.")
    return {name: flags for name, flags in variants.items() if name in set(only) | {"baseline"}}


# Left out of the plots to keep their legends readable (the tables list every run): the fp32 loss and entropy
# runs at k=2 and k=10, and the bf16 runs of the criteria other than MMS.
UNPLOTTED = frozenset(
    {
        *(f"{criterion}_k{k}" for criterion in ("loss", "entropy") for k in (2, 10)),
        *(f"{criterion}_k{k}_bf16" for criterion in ("loss", "entropy") for k in (2, 4, 10)),
        "mms_k10_bf16",
        "entropy_k4_bf16_chunk32",
    }
)


def plotted(name: str) -> bool:
    return name not in UNPLOTTED


# ---------------------------------------------------------------------------------------------------------------
# The suites: what `make bench` runs on the CPU, in order (`python -m tasks.bench suite --list` prints the command
# lines), the GPU lines, and the quick smoke version (`make bench-quick`).


@dataclass(frozen=True)
class GridLine:
    """One call of `python -m tasks.bench`: a micro-benchmark (overhead, scoring) or a grid over variants x seeds."""

    kind: str
    setting: str = ""
    seeds: tuple[int, ...] = ()  # empty: the default, 0 1 2
    ks: tuple[float, ...] = ()  # tta only; empty: the default, 2 4 10
    only: tuple[str, ...] = ()  # empty: every variant of the kind
    tag: str = ""
    runs_dir: str = ""  # empty: runs/bench
    quick: bool = False

    def argv(self) -> list[str]:
        argv = ["--runs_dir", self.runs_dir] if self.runs_dir else []
        argv.append(self.kind)
        if self.kind in TOOLS:
            return argv + (["--quick"] if self.quick else [])
        argv += ["--setting", self.setting]
        argv += ["--quick"] if self.quick else []
        argv += ["--tag", self.tag] if self.tag else []
        argv += ["--seeds", *map(str, self.seeds)] if self.seeds else []
        argv += ["--ks", *(f"{k:g}" for k in self.ks)] if self.ks else []
        argv += ["--only", *self.only] if self.only else []
        return argv


def _grid(k: int, *criteria: str, suffix: str = "") -> tuple[str, ...]:
    return tuple(f"{criterion}_k{k}{suffix}" for criterion in criteria)


_CHUNKED = "_bf16_chunk32"
ADAPTIVE_GRID = ("prune_margin_learned", "prune_loss_learned", "prune_loss_infobatch", "prune_margin",
                 "baseline_short_learned")  # fmt: skip
# the learned rules, and fixed quotas with their shorter schedule (on this LM the learned rules find no sequence
# learned, so their shorter schedule would be the baseline again); InfoBatch's rule has its own line, not yet run
LM_GRID = ("prune_margin_learned", "prune_loss_learned", "prune_margin", "prune_random", "baseline_short")
TEXT_ADAPTIVE_GRID = ("prune_margin_learned", "prune_loss_learned", "prune_loss_infobatch", "baseline_short_learned")
FIXED_GRID = ("prune_margin", "prune_loss", "prune_random", "baseline_short")
ADAPTIVE_TODO = ("cifar10_prune", "sst2_prune_long", "sst2_prune_3ep_8k")
SUITE: list[GridLine] = [
    GridLine("overhead"),
    GridLine("scoring"),
    GridLine("loader"),
    GridLine("lm_step"),
    # vision, early training: every criterion at every k, fp32 scoring
    GridLine("tta", "fmnist", (0, 1, 2), (2, 4, 10), tuple(
        name for k in (2, 4, 10) for name in _grid(k, "uniform", *CRITERIA)
    ), tag="grid3"),
    GridLine("mmr", "fmnist", (0, 1, 2)),
    GridLine("tta", "mrpc", (0,), (2,), ("mms_k2",)),
    # the text grid: every criterion scored the same way (bf16, length-sorted micro-batches of 32). Entropy only at
    # k=2 and once at k=10: on two classes it ranks as MMS does, up to float32 ties (k=2: identical runs)
    GridLine("tta", "mrpc", (0, 1, 2), (2,), ("uniform_k2", *_grid(2, *CRITERIA, suffix=_CHUNKED)), tag="grid"),
    GridLine("tta", "mrpc", (0, 1, 2), (4,), ("uniform_k4", *_grid(4, "mms", "loss", suffix=_CHUNKED)), tag="gridk4"),
    GridLine(
        "tta", "mrpc", (0, 1, 2), (10,), ("uniform_k10", *_grid(10, "mms", "loss", suffix=_CHUNKED)), tag="gridk10"
    ),
    GridLine("tta", "mrpc", (1,), (10,), _grid(10, "entropy", suffix=_CHUNKED), tag="entropyk10"),
    GridLine("mmr", "mrpc", (0, 1, 2)),
    GridLine("mmr", "cifar10_cpu", (0, 1, 2)),
    GridLine("mmr", "rte", (0, 1, 2)),
    GridLine("mmr", "sst2_cpu", (0, 1, 2)),
    # cheaper selection (cached margins, bf16 scoring, trimmed padding), at equal steps and compressed
    GridLine("tta", "fmnist", only=("mms_cached", "mms_cached_h25_r10", "mms_k2_bf16", "mms_k4_bf16"), tag="cheap"),
    GridLine("tta", "fmnist_long", only=("mms_cached", "mms_cached_h25_r10", "mms_k2_bf16"), tag="cheap"),
    GridLine("short", "fmnist_long"),
    GridLine("short", "mrpc_3ep", (0,)),
    GridLine("early", "fmnist_long", (0, 1, 2)),
    GridLine("tta", "fmnist_long", only=("mms_k2_bf16", "mms_k2_bf16_until50"), tag="until"),
    # the timing control: timings drift by up to 15% from one day to the next, so the baseline is timed again
    GridLine("tta", "fmnist_long", (0, 1, 2), only=("baseline",), tag="recheck", runs_dir="runs/bench_recheck"),
    GridLine("tta", "mrpc", (0,), only=("baseline",), tag="recheck", runs_dir="runs/bench_recheck"),
    GridLine("tta", "mrpc", (0, 1, 2), only=("mms_k2_bf16", "mms_k2_bf16_chunk32"), tag="cheap"),
    GridLine("tta", "mrpc", (0,), only=("mms_k2_bf16_notrim",), tag="notrim"),
    GridLine("tta", "mrpc_3ep", (0,), only=("mms_k2_bf16_chunk32",), tag="cheap"),
    GridLine("tta", "fmnist_long", (0,), only=("mms_k2_bf16", "mms_k2_bf16_compile"), tag="compile"),
    GridLine("tta", "mrpc", (0,), only=("mms_k2_bf16_chunk32", "mms_k2_bf16_chunk32_compile"), tag="compile"),
    # epoch pruning, can I leave it on? Adaptive pruning by margin and by loss, InfoBatch's own rule, and the shorter
    # schedule at adaptive margin's steps, beside the baseline timed in the same grid: from still climbing (sst2_prune)
    # to trained long past the plateau (fmnist_prune_long, sst2_prune_16ep). Vision runs the fixed quota beside them;
    # text has it in the fixed-quota lines below (its steps are set by the schedule, not by the scores)
    GridLine("prune", "fmnist_prune", (0, 1, 2), (), ADAPTIVE_GRID),
    GridLine("prune", "fmnist_prune_long", (0, 1), (), ADAPTIVE_GRID, "adaptive"),
    GridLine("prune", "sst2_prune_16ep", (0,), (), TEXT_ADAPTIVE_GRID, "adaptive"),
    GridLine("prune", "lm_sst2", (0,), (), LM_GRID),
    # not yet measured (hours each on 2 cores): the LM through SFTTrainer, and the adaptive rules on the rest
    GridLine("prune", "lm_sst2_sft", (0,), (), ("prune_margin",)),
    GridLine("prune", "lm_sst2", (0,), (), ("prune_loss_infobatch",), "infobatch"),
    GridLine("prune", "sst2_prune", (0,), (), TEXT_ADAPTIVE_GRID, "adaptive"),
    *(GridLine("prune", name, (0,), (), ADAPTIVE_GRID, "adaptive") for name in ADAPTIVE_TODO),
    # fixed quotas (every criterion at the default level, and the shorter schedule at their steps): measured on
    # 2026-11-30, before pruning planned one pass per Trainer epoch
    GridLine("prune", "fmnist_prune_long", (0, 1, 2), (), FIXED_GRID),
    GridLine("prune", "sst2_prune", (0, 1, 2)),
    GridLine("prune", "sst2_prune_long", (0, 1, 2), (), FIXED_GRID),
    GridLine("prune", "sst2_prune_16ep", (0, 1, 2, 3, 4, 5), (), FIXED_GRID),
    GridLine("prune", "cifar10_prune", (0, 1, 2), (), FIXED_GRID),
]  # fmt: skip

# On one GPU (`python -m tasks.bench suite --gpu`): full CIFAR-10, the overhead ratios.
GPU_SUITE: list[GridLine] = [
    GridLine("overhead"),
    GridLine("tta", "cifar10", (0,), (4,), ("mms_k4", "uniform_k4")),
    # epoch pruning on a GPU: ms per step in the full passes and in the pruned ones, against stock's
    GridLine("prune", "cifar10_prune_gpu", (0,), (), ("prune_margin_learned", "prune_loss_infobatch", "prune_margin")),
]

# Minutes: every benchmark path on tiny subsets (results go to results/*_quick_*.json).
QUICK_SUITE: list[GridLine] = [
    GridLine("scoring", quick=True),
    GridLine("tta", "fmnist", (0,), (4,), quick=True),
    GridLine("mmr", "fmnist", (0,), quick=True),
    GridLine("tta", "fmnist", (0,), only=("mms_cached", "mms_k2_bf16"), quick=True),
    GridLine("early", "fmnist_long", (0,), quick=True),
    GridLine("short", "fmnist_long", (0,), quick=True),
    GridLine("prune", "fmnist_prune", (0,), quick=True),
    GridLine("prune", "fmnist_prune", (0,), (), ADAPTIVE_GRID, "adaptive", quick=True),
    GridLine("prune", "lm_sst2", (0,), (), LM_GRID, quick=True),
]

SUITES = {"cpu": SUITE, "gpu": GPU_SUITE, "quick": QUICK_SUITE}
