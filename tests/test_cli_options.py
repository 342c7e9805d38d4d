"""The segmentation flags of `vptv segment`, `evaluate` and `demo`: one flag per
SegmentOptions field, the same defaults and help text, and help that names only the
choices a command offers."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from napari_vptv.cli import build_parser
from napari_vptv.cli.solver_options import FLAGS, options_from_args
from napari_vptv.options import SegmentOptions

#: Fields a command fixes itself (no flag).
FIXED = {"segment": set(), "evaluate": set(), "demo": {"preset", "n_classes"}}
REQUIRED = {"segment": ["img.png", "--out", "o"], "evaluate": ["--images", "i", "--masks", "m"], "demo": []}


def _subparser(name) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _actions(parser):
    return {flag: action for action in parser._actions for flag in action.option_strings}


def test_every_options_field_has_one_flag():
    assert set(FLAGS) == {f.name for f in dataclasses.fields(SegmentOptions)}
    assert len(set(FLAGS.values())) == len(FLAGS)


@pytest.mark.parametrize("command", sorted(FIXED))
def test_the_commands_share_the_segmentation_flags(command):
    actions = _actions(_subparser(command))
    reference = _actions(_subparser("segment"))
    for field, flag in FLAGS.items():
        if field in FIXED[command]:
            assert flag not in actions, flag
            continue
        assert flag in actions, f"{command} lacks {flag}"
        mine, ref = actions[flag], reference[flag]
        assert (mine.default, mine.choices, mine.help, mine.type) == (ref.default, ref.choices, ref.help, ref.type)
    # no flag's default differs from the options' default
    args = build_parser().parse_args([command] + REQUIRED[command])
    fixed = {"preset": "wbc"} if command == "demo" else {}
    assert options_from_args(args, **fixed) == SegmentOptions(**fixed)


def test_every_flag_reaches_the_options():
    args = build_parser().parse_args(
        [
            "evaluate",
            "--images",
            "i",
            "--masks",
            "m",
            "--method",
            "vptv",
            "--preset",
            "none",
            "--classes",
            "2",
            "--volume-mode",
            "interval",
            "--lower",
            "0.5,0.1",
            "--upper",
            "0.9,0.5",
            "--epsilon",
            "0.3",
            "--tv-weight",
            "0.4",
            "--edge",
            "--max-iter",
            "7",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--diameter",
            "40",
            "--keep-cells-without-nucleus",
            "--no-white-cell-rule",
            "--augment",
            "8",
        ]
    )
    opts = options_from_args(args)
    assert opts == SegmentOptions(
        method="vptv",
        preset="none",
        n_classes=2,
        volume_mode="interval",
        lower=(0.5, 0.1),
        upper=(0.9, 0.5),
        epsilon=0.3,
        tv_weight=0.4,
        edge=True,
        max_num_iter=7,
        seed=3,
        diameter=40.0,
        require_nucleus=False,
        white_cell_rule=False,
        augment=8,
    )


@pytest.mark.parametrize("command", sorted(FIXED))
def test_help_names_only_offered_choices(command):
    parser = _subparser(command)
    for action in parser._actions:
        if (
            not action.choices
            or not action.help
            or isinstance(action, argparse._SubParsersAction)
            or not all(isinstance(c, str) for c in action.choices)
        ):
            continue
        # "NAME: what it does" and "A / B: what they do" clauses name choices
        named = re.findall(r"(?:^|; )([\w-]+(?: / [\w-]+)*):", action.help)
        words = {w for clause in named for w in clause.split(" / ")}
        offered = {str(c) for c in action.choices}
        assert words <= offered, (action.option_strings, words - offered)
    assert (
        "--preset" not in parser.format_help() and "--classes" not in parser.format_help()
        if command == "demo"
        else True
    )
