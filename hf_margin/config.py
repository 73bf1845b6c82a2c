"""The margin knobs as dataclass fields: `MarginFields` (a mixin for any `TrainingArguments` subclass, e.g. TRL's
`SFTConfig`), `MarginTrainingArguments` (it, on `TrainingArguments`) and `MarginSettings` (the fields read once)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from .criteria import CriterionChoices, describe, get_criterion
from .selection import PRUNING_RULES, check_cached_fractions, check_pruning_fractions

# The names each field accepts, read from the criteria table when asked (criteria registered later count too).
SELECTION_CRITERIA = CriterionChoices("selection", extra=("none", "uniform", "mms_cached"))
PRUNING_CRITERIA = CriterionChoices("pruning", extra=("none",))
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
_PRUNING_FIELDS = ("pruning_rule", "pruning_ratio", "pruning_anneal", "pruning_rescale")
_FIXED_FIELDS = ("pruning_hard_fraction",)
_LEARNED_FIELDS = ("pruning_threshold", "pruning_learned_visits", "pruning_max_weight")


@dataclass
class MarginFields:
    """
    The knobs of margin-based training as dataclass fields: MMS selective sampling, epoch pruning and MMR
    multi-margin regularization (Weinstein, Fine and Hel-Or, 2019-2020). A mixin: combine it with any
    `TrainingArguments` subclass, `class MyConfig(MarginFields, SFTConfig)`, and the result parses with
    [`~transformers.HfArgumentParser`] and is saved with checkpoints like the other arguments
    ([`MarginTrainingArguments`] is it on `TrainingArguments`).

    With the defaults (`selection="none"`, `pruning="none"`, `mmr_alpha=0.0`) training is exactly the host trainer's.
    """

    selection: str = field(
        default="none",
        metadata={
            "help": "Which b samples of each oversampled pool to train on: 'none' (stock behaviour, no pool), "
            "'uniform' (random b of the pool: the control with the same data volume), 'mms_cached' (no pool and no "
            "scoring forward: each sample's MMS is kept from its last training forward, and an epoch is spent mostly "
            "on the samples with the smallest cached MMS; see selection_hard_fraction and selection_easy_rate), or a "
            f"criterion: {describe('selection')}.",
            "choices": SELECTION_CRITERIA,
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
            "help": "Dynamic epoch pruning: from the second pass over the data on, each pass trains on the samples "
            "its rule keeps (pruning_rule), with a weighted share of the others, so it has fewer optimizer steps; "
            "the last pruning_anneal share of the passes uses all the data. Scores come from each sample's last "
            "training forward (no extra forward). The criterion: 'none', or "
            f"{describe('pruning')}. Set num_train_epochs, the passes an unpruned run would make.",
            "choices": PRUNING_CRITERIA,
        },
    )
    pruning_rule: str = field(
        default="fixed",
        metadata={
            "help": "How a pruned pass chooses: 'fixed' quotas (the pruning_hard_fraction hardest samples, and "
            "a pruning_ratio share of the others dropped: a known budget; the LR schedule is fitted to the "
            "shortened run), 'learned' (adaptive: only samples whose scores show they are learned, see "
            "pruning_threshold and pruning_learned_visits, may be dropped, and the longer they stay learned the "
            "more often they are skipped; the LR schedule follows the progress through the planned passes), or "
            "'infobatch' (InfoBatch's rule: each sample on the easy side of the mean score is dropped with "
            "probability pruning_ratio; the LR schedule as for 'learned').",
            "choices": list(PRUNING_RULES),
        },
    )
    pruning_hard_fraction: float = field(
        default=0.3,
        metadata={
            "help": "pruning_rule='fixed': share of the samples counted hard, the hardest by the criterion, always "
            "trained on (samples not scored yet count as hard). In [0, 1]."
        },
    )
    pruning_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Pruning: 'fixed': share of the easy samples dropped from a pruned pass; 'infobatch': the "
            "probability that an easy sample is dropped (InfoBatch's r); 'learned': the probability that a sample "
            "just found learned is dropped (each further learned visit keeps it (1 - ratio) times as often). Kept "
            "samples that stand for dropped ones are weighted up so the pass's expected gradient is a full pass's. "
            "In [0, 1)."
        },
    )
    pruning_threshold: float | None = field(
        default=None,
        metadata={
            "help": "pruning_rule='learned': the value past which a visit finds a sample learned; None takes the "
            "criterion's own: margin: the true class's logit above the strongest other class's by more than ln 9 "
            "(nine times as likely); loss: below 0.1 (the true class's probability above 0.9)."
        },
    )
    pruning_learned_visits: int = field(
        default=2,
        metadata={
            "help": "pruning_rule='learned': how many visits in a row must find a sample learned before it may be "
            "dropped. >= 1."
        },
    )
    pruning_max_weight: float = field(
        default=8.0,
        metadata={
            "help": "pruning_rule='learned': the largest loss weight of a kept learned sample, so the least often a "
            "learned sample is kept is 1 / max_weight of the passes. >= 1; 1 drops nothing."
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
            "help": "Pruning: weight the kept samples that stand for dropped ones by (samples they stand for) / "
            "(kept), keeping the pass's gradient unbiased. False keeps weight 1."
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
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()  # the host arguments' own checks first (TrainingArguments, SFTConfig, ...)
        self.check_margin_fields()

    def check_margin_fields(self) -> None:
        """Every margin field in range and consistent with the others: a `ValueError` naming the field."""
        if self.selection not in SELECTION_CRITERIA:
            raise ValueError(
                f"selection={self.selection!r} is not a known criterion; choose one of {list(SELECTION_CRITERIA)}."
            )
        if not self.selection_oversample >= 1.0:
            raise ValueError(f"selection_oversample (k) must be >= 1, got {self.selection_oversample}.")
        check_cached_fractions(self.selection_hard_fraction, self.selection_easy_rate)
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
        self._check_pruning()
        self._refuse_unused_fields()
        if not self.mmr_alpha >= 0.0:
            raise ValueError(f"mmr_alpha must be >= 0, got {self.mmr_alpha}.")
        if self.mmr_alpha_end is not None and not self.mmr_alpha_end >= 0.0:
            raise ValueError(f"mmr_alpha_end must be >= 0 or None, got {self.mmr_alpha_end}.")
        if isinstance(self, TrainingArguments):
            self._check_against_training_arguments()

    def _check_pruning(self) -> None:
        if self.pruning not in PRUNING_CRITERIA:
            raise ValueError(
                f"pruning={self.pruning!r} is not a known criterion; choose one of {list(PRUNING_CRITERIA)}."
            )
        if self.pruning_rule not in PRUNING_RULES:
            raise ValueError(f"pruning_rule={self.pruning_rule!r} is not a rule; choose one of {PRUNING_RULES}.")
        check_pruning_fractions(self.pruning_hard_fraction, self.pruning_ratio, self.pruning_anneal)
        if not self.pruning_learned_visits >= 1:
            raise ValueError(f"pruning_learned_visits must be >= 1, got {self.pruning_learned_visits}.")
        if not self.pruning_max_weight >= 1.0:
            raise ValueError(f"pruning_max_weight must be >= 1, got {self.pruning_max_weight}.")
        if self.pruning == "none":
            return
        if self.selection != "none":
            raise ValueError(
                f"pruning={self.pruning!r} and selection={self.selection!r} are two selection mechanisms; "
                "use one of them."
            )
        criterion = get_criterion(self.pruning)
        if self.pruning_rule == "learned" and not criterion.says_learned:
            raise ValueError(
                f"pruning_rule='learned' needs a criterion that says when a sample is learned, and "
                f"pruning={self.pruning!r} cannot; use one of {list(CriterionChoices('learned'))}."
            )
        if self.pruning_rule == "infobatch" and criterion.score is None:
            raise ValueError(
                f"pruning_rule='infobatch' drops samples on the easy side of the mean score, and "
                f"pruning={self.pruning!r} has no score; use a scored criterion."
            )

    def _check_against_training_arguments(self) -> None:
        if self.selection == "mms_cached" and self.train_sampling_strategy != "random":
            raise ValueError(
                f"selection='mms_cached' draws its own random passes and replaces the train sampler; "
                f"train_sampling_strategy={self.train_sampling_strategy!r} cannot apply: leave it 'random'."
            )
        if self.pruning == "none":
            return
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

    def _refuse_unused_fields(self) -> None:
        """A field that the chosen mechanism does not read, set away from its default, is a mistake: say so."""
        defaults = {f.name: f.default for f in fields(MarginFields)}
        pool = self.selection not in ("none", "mms_cached")
        pruning = self.pruning != "none"
        for names, used, where in (
            (_POOL_FIELDS, pool, "pool selection (selection other than 'none' and 'mms_cached')"),
            (_CACHED_FIELDS, self.selection == "mms_cached", "selection='mms_cached'"),
            (_PRUNING_FIELDS, pruning, "pruning"),
            (_FIXED_FIELDS, pruning and self.pruning_rule == "fixed", "pruning_rule='fixed'"),
            (_LEARNED_FIELDS, pruning and self.pruning_rule == "learned", "pruning_rule='learned'"),
        ):
            for name in names:
                if not used and getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} applies to {where} only, which is off here "
                        f"(selection={self.selection!r}, pruning={self.pruning!r}, "
                        f"pruning_rule={self.pruning_rule!r}); remove it or turn that on."
                    )


@dataclass
class MarginTrainingArguments(MarginFields, TrainingArguments):
    """
    [`~transformers.TrainingArguments`] plus the knobs of margin-based training ([`MarginFields`]): MMS selective
    sampling, epoch pruning and MMR multi-margin regularization (Weinstein, Fine and Hel-Or, 2019-2020).

    With the defaults (`selection="none"`, `pruning="none"`, `mmr_alpha=0.0`) training is exactly stock `Trainer`
    training. Every field parses from the command line with [`~transformers.HfArgumentParser`] and is saved with
    checkpoints like any other training argument.
    """


@dataclass
class MarginSettings(MarginFields):
    """
    The margin fields of a run's arguments, read once into typed attributes (the same fields and defaults as
    [`MarginFields`]). Arguments without them (a plain `TrainingArguments`) give the defaults: every feature off.
    """

    @classmethod
    def from_args(cls, args: object) -> MarginSettings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(MarginFields) if hasattr(args, f.name)})

    @property
    def mmr_on(self) -> bool:
        return self.mmr_alpha > 0.0 or bool(self.mmr_alpha_end)

    @property
    def is_stock(self) -> bool:
        """Every margin feature off: the trainer must then be exactly the host trainer."""
        return self.selection == "none" and self.pruning == "none" and not self.mmr_on
