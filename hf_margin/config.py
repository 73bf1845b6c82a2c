"""`MarginTrainingArguments`: every margin knob as a `TrainingArguments` field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from .selection import check_cached_fractions, check_pruning_fractions

SELECTION_CRITERIA = ("none", "uniform", "mms", "entropy", "loss", "mms_cached")
PRUNING_CRITERIA = ("none", "margin", "mms", "loss", "random")
# Fields that only one mechanism reads: set with another, they are refused rather than ignored.
_POOL_FIELDS = (
    "selection_oversample",
    "selection_eval_mode",
    "selection_scoring_dtype",
    "selection_scoring_batch_size",
    "selection_scoring_compile",
    "selection_trim_padding",
)
_CACHED_FIELDS = ("selection_hard_fraction", "selection_easy_rate", "selection_easy_rescale")
_PRUNING_FIELDS = ("pruning_hard_fraction", "pruning_ratio", "pruning_anneal", "pruning_rescale")


@dataclass
class MarginTrainingArguments(TrainingArguments):
    """
    [`~transformers.TrainingArguments`] plus the knobs of margin-based training: MMS selective sampling
    and MMR multi-margin regularization (Weinstein, Fine and Hel-Or, 2019-2020).

    With the defaults (`selection="none"`, `mmr_alpha=0.0`) training is exactly stock `Trainer` training.
    Every field parses from the command line with [`~transformers.HfArgumentParser`] and is saved with
    checkpoints like any other training argument.
    """

    selection: str = field(
        default="none",
        metadata={
            "help": "Which b samples of each oversampled pool to train on: 'none' (stock behaviour, no pool), "
            "'uniform' (random b of the pool: the control with the same data volume), 'mms' (smallest minimal "
            "margin score), 'entropy' (largest softmax entropy), 'loss' (largest per-sample loss: hard-negative "
            "mining; needs labels), or 'mms_cached' (no pool and no scoring forward: each sample's MMS is kept from "
            "its last training forward, and an epoch is spent mostly on the samples with the smallest cached MMS; "
            "see selection_hard_fraction and selection_easy_rate).",
            "choices": list(SELECTION_CRITERIA),
        },
    )
    selection_oversample: float = field(
        default=10.0,
        metadata={
            "help": "k: the scoring pool per device and step is round(k * per_device_train_batch_size) samples, "
            "scored with one no-grad forward pass. k >= 1. One epoch scores every sample once, so it has k times "
            "fewer optimizer steps than without selection."
        },
    )
    selection_hard_fraction: float = field(
        default=0.5,
        metadata={
            "help": "selection='mms_cached': samples whose cached MMS is at or below this quantile of the known "
            "scores are always trained on, as are samples not scored yet. In [0, 1]; 1 trains on everything."
        },
    )
    selection_easy_rate: float = field(
        default=0.25,
        metadata={
            "help": "selection='mms_cached': each other sample is trained on with this probability when its turn "
            "comes, its loss weighted by 1 / rate so the expected gradient is unchanged. In (0, 1]. A pass then "
            "costs about hard_fraction + (1 - hard_fraction) * rate of a full pass."
        },
    )
    selection_eval_mode: bool = field(
        default=True,
        metadata={
            "help": "Score the pool with the model in eval mode (dropout off, BatchNorm running statistics used "
            "and left untouched), then restore its mode. False scores in train mode."
        },
    )
    selection_easy_rescale: bool = field(
        default=True,
        metadata={
            "help": "selection='mms_cached': weight the loss of easy samples by 1 / selection_easy_rate (unbiased). "
            "False keeps their weight 1: a biased focus on the hard samples, like the papers' selection."
        },
    )
    selection_scoring_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Autocast dtype of the scoring forward: None uses the training's own autocast (none in fp32 "
            "training); 'bfloat16' or 'float16' score in that precision whatever the training precision, which "
            "is much cheaper on hardware with fast half-precision matmuls. Only the ranking of the pool depends on "
            "it.",
            "choices": [None, "bfloat16", "float16"],
        },
    )
    selection_scoring_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "None scores the whole pool in one forward. An int scores it in micro-batches of that many "
            "samples: padded text (an `attention_mask`) is sorted by length first and each micro-batch cut to "
            "its own padding (unless selection_trim_padding is off), which saves the scoring compute spent on "
            "padding; it also bounds the scoring pass's memory. In eval-mode fp32 scoring the scores do not "
            "depend on it; in bf16 they differ in the last bits."
        },
    )
    selection_scoring_compile: bool = field(
        default=False,
        metadata={
            "help": "Run the scoring forward through `torch.compile(model)` (the training forward stays as it is). "
            "The first steps pay the compile; text whose padded length varies from step to step recompiles for "
            "dynamic shapes (see BENCHMARKS.md for when it pays)."
        },
    )
    selection_until: float = field(
        default=1.0,
        metadata={
            "help": "Share of the run's optimizer steps (of max_steps) during which samples are selected; after "
            "it, training draws plain uniform batches (the first b of each pool, with no scoring; for "
            "'mms_cached', plain passes) so the last steps see all the data. In (0, 1]."
        },
    )
    selection_trim_padding: bool = field(
        default=True,
        metadata={
            "help": "Pool selection on padded text: cut the padding columns (`attention_mask` all zero, at either "
            "end) that no selected sample needs, so the b selected samples train at their own padded length, as "
            "if collated alone, rather than at the longest of the pool's k*b. The collator's `pad_to_multiple_of` "
            "is kept, and a collator with `padding='max_length'` keeps its fixed length. Batches without an "
            "`attention_mask` are unchanged."
        },
    )
    pruning: str = field(
        default="none",
        metadata={
            "help": "Dynamic epoch pruning: from the second pass over the data on, each pass trains on the hard "
            "samples and a weighted random share of the easy ones, so it has fewer optimizer steps; the last "
            "pruning_anneal share of the passes uses all the data. The criterion, scored on each sample's last "
            "training forward (no extra forward): 'margin' (signed, label-aware margin "
            "(s_y - max_{j!=y} s_j) / ||w_y - w_j||: small or negative is hard, so a confidently wrong sample stays), "
            "'mms' (the label-free minimal margin score), 'loss' (per-sample loss: large is hard, as InfoBatch), or "
            "'random' (a fresh random subset of the same size each pass, no scores: RS2). Set num_train_epochs, "
            "the passes an unpruned run would make; the LR schedule is fitted to the shortened run.",
            "choices": list(PRUNING_CRITERIA),
        },
    )
    pruning_hard_fraction: float = field(
        default=0.3,
        metadata={
            "help": "Pruning: share of the samples counted hard, the hardest by the criterion, always trained on "
            "(samples not scored yet count as hard). In [0, 1]."
        },
    )
    pruning_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Pruning: share of the easy samples dropped from a pruned pass (InfoBatch's r); the kept ones "
            "are weighted up so the pass's expected gradient is a full pass's. In [0, 1). A pruned pass costs "
            "hard_fraction + (1 - hard_fraction) * (1 - ratio) of a full one."
        },
    )
    pruning_anneal: float = field(
        default=0.125,
        metadata={
            "help": "Pruning: share of the passes, at the end of the run, that train on all the data with weight 1 "
            "(InfoBatch anneals the last 12.5 percent). In [0, 1]."
        },
    )
    pruning_rescale: bool = field(
        default=True,
        metadata={
            "help": "Pruning: weight the kept easy samples by (easy samples) / (kept easy samples), keeping the "
            "pass's gradient unbiased. False keeps weight 1."
        },
    )
    mmr_alpha: float = field(
        default=0.0,
        metadata={"help": "Weight of the multi-margin (MMR) penalty added to the loss; 0 turns MMR off."},
    )
    mmr_alpha_end: float | None = field(
        default=None,
        metadata={
            "help": "If set, alpha ramps linearly from `mmr_alpha` at step 0 to `mmr_alpha_end` at the last "
            "step (the papers use 1e-5 -> 1e-3). None keeps alpha constant."
        },
    )
    log_timing: bool = field(
        default=False,
        metadata={
            "help": "Add wall-clock keys to the training logs: `train_seconds` and `train_cpu_seconds` (wall and "
            "process CPU time of training so far, evaluation excluded) on every log, and with selection "
            "`scoring_time_share` and `break_even_step_ratio`, plus the run's totals at the end. Off by default: "
            "wall-clock values make a resumed run's log history differ from an uninterrupted run's. The end-of-run "
            "verdict is logged either way."
        },
    )
    classifier_name: str | None = field(
        default=None,
        metadata={
            "help": "Dotted module path of the last linear layer (e.g. 'classifier' or 'timm_model.fc'), for "
            "models where it is not found automatically."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.selection not in SELECTION_CRITERIA:
            raise ValueError(
                f"selection={self.selection!r} is not a known criterion; choose one of {SELECTION_CRITERIA}."
            )
        if not self.selection_oversample >= 1.0:
            raise ValueError(f"selection_oversample (k) must be >= 1, got {self.selection_oversample}.")
        check_cached_fractions(self.selection_hard_fraction, self.selection_easy_rate)
        if self.selection == "mms_cached" and self.train_sampling_strategy != "random":
            raise ValueError(
                f"selection='mms_cached' draws its own random passes and replaces the train sampler; "
                f"train_sampling_strategy={self.train_sampling_strategy!r} cannot apply: leave it 'random'."
            )
        if self.selection_scoring_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(
                f"selection_scoring_dtype must be None, 'bfloat16' or 'float16', got {self.selection_scoring_dtype!r}."
            )
        if self.selection_scoring_batch_size is not None and not self.selection_scoring_batch_size >= 1:
            raise ValueError(
                f"selection_scoring_batch_size must be None or >= 1, got {self.selection_scoring_batch_size}."
            )
        if not 0.0 < self.selection_until <= 1.0:
            raise ValueError(f"selection_until must be in (0, 1], got {self.selection_until}.")
        if self.pruning not in PRUNING_CRITERIA:
            raise ValueError(f"pruning={self.pruning!r} is not a known criterion; choose one of {PRUNING_CRITERIA}.")
        check_pruning_fractions(self.pruning_hard_fraction, self.pruning_ratio, self.pruning_anneal)
        if self.pruning != "none":
            if self.selection != "none":
                raise ValueError(
                    f"pruning={self.pruning!r} and selection={self.selection!r} are two selection mechanisms; "
                    "use one of them."
                )
            if self.max_steps > 0:
                raise ValueError(
                    f"pruning plans whole passes over the data: set num_train_epochs (the passes an unpruned run "
                    f"would make) and leave max_steps=-1 (got max_steps={self.max_steps})."
                )
            if self.num_train_epochs != int(self.num_train_epochs) or self.num_train_epochs < 1:
                raise ValueError(
                    f"pruning plans whole passes: num_train_epochs must be a whole number >= 1, got "
                    f"{self.num_train_epochs}."
                )
            if self.train_sampling_strategy != "random":
                raise ValueError(
                    f"pruning draws its own random passes and replaces the train sampler; "
                    f"train_sampling_strategy={self.train_sampling_strategy!r} cannot apply: leave it 'random'."
                )
        self._refuse_unused_fields()
        if not self.mmr_alpha >= 0.0:
            raise ValueError(f"mmr_alpha must be >= 0, got {self.mmr_alpha}.")
        if self.mmr_alpha_end is not None and not self.mmr_alpha_end >= 0.0:
            raise ValueError(f"mmr_alpha_end must be >= 0 or None, got {self.mmr_alpha_end}.")

    def _refuse_unused_fields(self) -> None:
        """A field that the chosen mechanism does not read, set away from its default, is a mistake: say so."""
        defaults = {f.name: f.default for f in fields(MarginTrainingArguments)}
        pool = self.selection in ("uniform", "mms", "entropy", "loss")
        for names, used, where in (
            (_POOL_FIELDS, pool, "pool selection (selection in uniform, mms, entropy, loss)"),
            (_CACHED_FIELDS, self.selection == "mms_cached", "selection='mms_cached'"),
            (_PRUNING_FIELDS, self.pruning != "none", "pruning"),
        ):
            for name in names:
                if not used and getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} applies to {where} only, which is off here "
                        f"(selection={self.selection!r}, pruning={self.pruning!r}); remove it or turn that on."
                    )


@dataclass(frozen=True)
class MarginSettings:
    """
    The margin fields of a run's arguments, read once into typed attributes. A plain `TrainingArguments` gives the
    defaults: every margin feature off.
    """

    selection: str = "none"
    selection_oversample: float = 10.0
    selection_hard_fraction: float = 0.5
    selection_easy_rate: float = 0.25
    selection_easy_rescale: bool = True
    selection_eval_mode: bool = True
    selection_scoring_dtype: str | None = None
    selection_scoring_batch_size: int | None = None
    selection_scoring_compile: bool = False
    selection_until: float = 1.0
    selection_trim_padding: bool = True
    pruning: str = "none"
    pruning_hard_fraction: float = 0.3
    pruning_ratio: float = 0.5
    pruning_anneal: float = 0.125
    pruning_rescale: bool = True
    mmr_alpha: float = 0.0
    mmr_alpha_end: float | None = None
    log_timing: bool = False
    classifier_name: str | None = None

    @classmethod
    def from_args(cls, args: TrainingArguments) -> MarginSettings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    @property
    def mmr_on(self) -> bool:
        return self.mmr_alpha > 0.0 or bool(self.mmr_alpha_end)

    @property
    def is_stock(self) -> bool:
        """Every margin feature off: the trainer must then be exactly `Trainer`."""
        return self.selection == "none" and self.pruning == "none" and not self.mmr_on
