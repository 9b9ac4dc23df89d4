"""The command line explains itself: every option's help states its default, ``--version``
comes from the package metadata, and ``dataselect scorers`` lists each scorer's ``-p``
parameters exactly as ``-p`` reads them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Iterator
from importlib import metadata

import pytest
from test_plugins import install_plugin

from dataselect.params import value_text
from pipelines.cli import build_parser, main, parse_params
from scorers import BUILTIN, SCORERS

# actions whose default says nothing: choosing a command, and on/off switches, which are
# off unless given (--help and --version have none: argparse.SUPPRESS)
SELF_EVIDENT = (argparse._SubParsersAction, argparse._StoreTrueAction)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_option_has_help_and_states_its_default():
    parsers = list(_parsers(build_parser()))
    assert {p.prog for p in parsers} >= {"dataselect select", "dataselect scorers",
                                         "dataselect index build", "dataselect eval"}
    missing, undefaulted = [], []
    for parser in parsers:
        parser.format_help()  # a stray % in a help text fails here, not in a user's shell
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(name)
            elif (action.default not in (None, argparse.SUPPRESS)
                    and not isinstance(action, SELF_EVIDENT)
                    and "%(default)s" not in action.help):
                undefaulted.append(name)
    assert missing == []
    assert undefaulted == []


@pytest.mark.parametrize("argv, shown", [
    (["select", "--help"], ["--scorer NAME auto, bads, dsir, embed, fasttext, less, zipfit",
                            "--seed SEED", "(default: 0)", "(default: parquet)",
                            "(default: 0.1, at most 64 MiB of the pool)", "(default: 4.0)",
                            "(default: auto)"]),
    (["eval", "--help"], ["(default: 0,1,2)"]),
    (["index", "build", "--help"], ["(default: flat)", "(default: 16)", "(default: 32)"]),
])
def test_help_prints_the_defaults(argv, shown, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert [s for s in shown if s not in printed] == []


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"dataselect {metadata.version('dataselect')}"


def test_scorers_lists_every_field_of_every_builtin_with_its_default(capsys):
    assert main(["scorers", "--json"]) == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert sorted(listed) == sorted(BUILTIN)
    for name, entry in listed.items():
        cls = SCORERS[name]
        fields = [f for f in dataclasses.fields(cls) if f.init]
        assert [p["name"] for p in entry["parameters"]] == [f.name for f in fields]
        assert entry["default_policy"] == cls.default_policy
        for parameter, field in zip(entry["parameters"], fields):
            assert parameter["required"] == (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING), (name, field.name)
    assert listed["less"]["needs"] == ["model", "pool_features", "warmup"]
    assert listed["dsir"]["needs"] == []


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_each_listed_default_given_back_as_p_is_the_default(name):
    """The listing writes defaults as ``-p`` reads them: feeding each back gives the same
    value, so a user can copy a line of the table into a command."""
    cls = SCORERS[name]
    for field in dataclasses.fields(cls):
        if not field.init or (field.default is dataclasses.MISSING
                              and field.default_factory is dataclasses.MISSING):
            continue
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())
        parsed = parse_params(name, [f"{field.name}={value_text(default)}"])[field.name]
        assert parsed == (list(default) if isinstance(default, tuple) else default), field


def test_scorers_table_is_aligned_and_names_required_parameters(capsys):
    assert main(["scorers"]) == 0
    printed = capsys.readouterr().out
    blocks = {b.split(":")[0]: b for b in printed.strip().split("\n\n")}
    assert sorted(blocks) == sorted(BUILTIN)
    dsir = blocks["dsir"].splitlines()
    assert dsir[1] == "  --policy auto: importance_resample"
    assert re.fullmatch(r"  parameter +type +default", dsir[2])
    column = dsir[2].index("default")
    rows = {line.split()[0]: line for line in dsir[3:]}
    assert rows["num_buckets"][column:] == "10000"
    assert rows["tokenizer"].split()[1:] == ["fast|reference", "fast"]
    assert rows["fit_fraction"].split()[1:] == ["float|none", "none"]
    assert rows["length_normalize"].split()[1:] == ["bool", "false"]
    less = {line.split()[0]: line.split()[1:] for line in blocks["less"].splitlines()[4:]}
    assert less["model"] == ["str", "(required)"]
    assert less["checkpoints"] == ["list", '""']


@pytest.fixture
def _fresh_registry():
    SCORERS.refresh()
    yield
    SCORERS.refresh()


@pytest.mark.usefixtures("_fresh_registry")
def test_scorer_choices_check_names_without_importing_a_scorer(capsys):
    names = SCORERS.names()
    assert "dsir" in names and "nope" not in names and list(names) == sorted(BUILTIN)
    assert SCORERS._classes == {}
    with pytest.raises(SystemExit) as exit:
        main(["score", "--scorer", "nope", "--pool", "p", "--target", "t", "--out", "o"])
    assert exit.value.code == 2
    assert "invalid choice: 'nope' (choose from 'auto', 'bads', 'dsir'" in capsys.readouterr().err


@pytest.mark.usefixtures("_fresh_registry")
def test_scorers_lists_an_installed_plugin(tmp_path, monkeypatch, capsys):
    install_plugin(tmp_path, monkeypatch)
    assert main(["scorers"]) == 0
    block = next(b for b in capsys.readouterr().out.split("\n\n") if b.startswith("length:"))
    assert block.splitlines()[0] == "length: Longer documents are more wanted (times scale)."
    assert block.splitlines()[-1].split() == ["scale", "float", "1.0"]


@pytest.mark.usefixtures("_fresh_registry")
def test_a_plugin_that_cannot_be_imported_is_listed_with_its_error(tmp_path, monkeypatch,
                                                                    capsys):
    install_plugin(tmp_path, monkeypatch, target="plug_scorer:Missing")
    assert main(["scorers"]) == 0
    printed = capsys.readouterr().out
    assert "length\n  cannot be listed: " in printed and "plug_scorer:Missing" in printed
    assert "dsir: Hashed n-gram importance weights." in printed  # the rest still listed
