"""
Every command line of `tasks/`: `--help` of each recipe and tool exits 0 and lists its flags, every field's help
text renders (argparse formats it, so a bare `%` fails), every flag the recipes are run with survives a round
trip through the parser, and no recipe reaches into another's private names.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import shlex
from pathlib import Path

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_margin import MarginTrainingArguments
from tasks import active, active_bench, demo, glue, image, plot, text
from tasks.bench import registry
from tasks.bench.__main__ import build_parser
from tasks.bench.__main__ import main as bench
from tasks.paths import ROOT

RECIPES = {"glue": glue, "image": image, "text": text}
ARGUMENT_CLASSES = [glue.GlueTaskArguments, image.ImageArguments, text.TextArguments, active.ActiveArguments]


def help_of(entry_point, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entry_point(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_help_lists_its_own_and_the_trainers_flags(name, capsys):
    recipe = RECIPES[name].RECIPE
    out = help_of(RECIPES[name].main, ["--help"], capsys)
    assert out.startswith(f"usage: python -m tasks.{name}")
    assert recipe.description.strip().splitlines()[0] in out  # the module's docstring leads the help
    for flag in [f.name for f in dataclasses.fields(recipe.arguments)] + ["selection", "mmr_alpha", "learning_rate"]:
        assert f"--{flag}" in out


@pytest.mark.parametrize("recipe", active.RECIPES)
def test_active_help_with_each_recipe(recipe, capsys):
    out = help_of(active.main, ["--recipe", recipe, "--help"], capsys)
    arguments = RECIPES[recipe].RECIPE.arguments
    for flag in ["criterion", "query_size", *(f.name for f in dataclasses.fields(arguments)), "selection"]:
        assert f"--{flag}" in out
    assert "--criterion" in help_of(active.main, ["--help"], capsys)  # the image recipe's flags by default


def test_tool_help(capsys):
    assert "--max_steps" in help_of(demo.main, ["--help"], capsys)
    assert "--out" in help_of(plot.main, ["--help"], capsys)
    assert "run" in help_of(active_bench.main, ["--help"], capsys)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {*registry.TOOLS, *registry.KINDS, "suite", "report"}
    assert all(command in help_of(bench, ["--help"], capsys) for command in commands)
    for command in commands:
        out = help_of(bench, [command, "--help"], capsys)
        assert out.startswith(f"usage: python -m tasks.bench {command}")
    assert "--setting" in help_of(bench, ["tta", "--help"], capsys)


@pytest.mark.parametrize("arguments", ARGUMENT_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("formatter", [argparse.HelpFormatter, argparse.ArgumentDefaultsHelpFormatter])
def test_every_fields_help_renders(arguments, formatter):
    parser = HfArgumentParser((arguments, MarginTrainingArguments), formatter_class=formatter)
    rendered = {}
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            try:
                rendered[action.dest] = parser._get_formatter()._expand_help(action)
            except (ValueError, TypeError, KeyError) as err:  # what a bare % raises when argparse formats it
                pytest.fail(f"--{action.dest}: its help does not render ({err!r}): {action.help!r}")
    own = [f.name for f in dataclasses.fields(arguments)]
    margin = [f.name for f in dataclasses.fields(MarginTrainingArguments) if not hasattr(TrainingArguments, f.name)]
    for name in own + margin:
        assert rendered.get(name, "").strip(), f"--{name} has no help text"


# ------------------------------------------------------------------------------------------ round trip


def as_flags(value) -> list[str]:
    """A parsed value written back as the command line would give it."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value] or ["none"]  # an empty report_to is written "none"
    return [str(value)]


def explicit_names(argv: list[str]) -> list[str]:
    return [token[2:].split("=", 1)[0] for token in argv if token.startswith("--")]


def round_trip(parse, argv: list[str]) -> None:
    """Parse `argv`, write every given flag and every recipe field back from the dataclasses, parse again."""
    parsed = parse(argv)
    owners = {}
    for obj in parsed:
        for f in dataclasses.fields(obj):
            owners.setdefault(f.name, obj)
    recipe_fields = [f.name for f in dataclasses.fields(parsed[-2])]  # the recipe's own dataclass
    names = list(dict.fromkeys(explicit_names(argv) + recipe_fields))
    again_argv = [
        token
        for name in names
        if getattr(owners[name], name) is not None
        for token in (f"--{name}", *as_flags(getattr(owners[name], name)))
    ]
    again = parse(again_argv)
    owners_again = {f.name: obj for obj in again for f in dataclasses.fields(obj)}
    for name in names:
        assert getattr(owners_again[name], name) == getattr(owners[name], name), f"--{name} did not round-trip"


def registry_argv(recipe: str) -> list[list[str]]:
    settings = [s for s in registry.SETTINGS.values() if s.recipe == recipe]
    assert settings
    return [[*s.argv, *quick] for s in settings for quick in ([], s.quick_argv)]


@pytest.mark.parametrize("argv", registry_argv("image"), ids=lambda argv: shlex.join(argv)[:60])
def test_image_benchmark_flags_round_trip(tmp_path, argv):
    round_trip(image.parse_args, [*argv, "--output_dir", str(tmp_path), "--use_cpu", "true", "--seed", "3"])


@pytest.mark.parametrize("argv", registry_argv("glue"), ids=lambda argv: shlex.join(argv)[:60])
def test_glue_benchmark_flags_round_trip(tmp_path, argv):
    round_trip(glue.parse_args, [*argv, "--output_dir", str(tmp_path), "--save_strategy", "no", "--bf16", "false"])


@pytest.mark.parametrize("schedule", image.SCHEDULE_PRESETS)
def test_image_presets_round_trip(tmp_path, schedule):
    round_trip(image.parse_args, ["--schedule", schedule, "--output_dir", str(tmp_path)])


def test_text_and_active_flags_round_trip(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    text_argv = [
        *("--train_file", str(tmp_path / "train.csv"), "--validation_split_fraction", "0.5"),
        *("--text_column_names", "text", "--random_init_config", '{"hidden_size": 32}', "--max_seq_length", "32"),
        *("--max_train_samples", "8", "--selection", "mms", "--selection_oversample", "2", "--mmr_alpha", "1e-3"),
        *("--output_dir", str(tmp_path), "--use_cpu", "true", "--disable_tqdm", "true", "--eval_strategy", "steps"),
    ]
    round_trip(text.parse_args, text_argv)
    image_argv = ["--dataset_name", "digits", "--model_kwargs", '{"widths": [4, 8]}', "--max_steps", "3"]
    round_trip(
        lambda argv: tuple(active.parse_args(["--recipe", "image", *argv])),
        [*image_argv, "--criterion", "entropy", "--rounds", "2", "--output_dir", str(tmp_path)],
    )


# ------------------------------------------------------------------------------------------ structure


def test_no_recipe_imports_another_modules_private_names():
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports {private} from {node.module}"


def test_each_recipe_is_the_shared_skeleton():
    from tasks.recipe import Recipe

    for name, module in RECIPES.items():
        assert isinstance(module.RECIPE, Recipe) and module.main == module.RECIPE.main, name
        assert Path(module.__file__).stem == name and module.RECIPE.prog == f"python -m tasks.{name}"
    assert isinstance(glue.RECIPE, text.TextRecipe)  # GLUE is the text recipe with GLUE's loader and metrics
