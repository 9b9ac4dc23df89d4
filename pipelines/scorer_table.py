"""``dataselect scorers``: every registered scorer with its ``-p`` parameters.

A scorer's parameters are its dataclass fields, and :func:`dataselect.params.describe_settings`
reads them with the same types ``-p`` values are converted by, so this listing is what the
command line accepts, for the built-in scorers and installed plug-ins alike. Listing imports
each scorer's module; the model-based ones bring torch with them, which is why this is a
command of its own and not part of ``--help``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from dataselect.errors import InputError, one_line
from dataselect.params import describe_settings, value_text
from dataselect.scoring import Scorer, needs_warmup

# what a scorer declares it needs (dataselect.scoring.Scorer's class attributes, and the
# TakesWarmup base): whether a class does, its key in the JSON listing, and its words in
# the text listing
NEEDS: tuple[tuple[Callable[[type[Scorer]], bool], str, str], ...] = (
    (lambda cls: cls.needs_model, "model", "a model (-p model=FOLDER)"),
    (lambda cls: cls.pool_features, "pool_features", "a pool feature store"),
    (needs_warmup, "warmup", "LoRA warmup checkpoints"))
WORDS = {key: words for _, key, words in NEEDS}
HEADINGS = ("parameter", "type", "default")


def describe_scorers(registry: Mapping[str, type]) -> list[dict[str, Any]]:
    """One entry per scorer name, in name order; a plug-in that cannot be imported is
    listed with its error instead of failing the whole listing."""
    described = []
    for name in sorted(registry):
        try:
            cls = registry[name]
        except InputError as exc:
            described.append({"name": name, "error": str(exc)})
            continue
        described.append({
            "name": name,
            "summary": _summary(cls),
            "default_policy": cls.default_policy,
            "needs": [key for declares, key, _ in NEEDS if declares(cls)],
            "parameters": [dataclasses.asdict(s) for s in describe_settings(cls)],
        })
    return described


def scorers_json(described: list[dict[str, Any]]) -> str:
    """Strict JSON: a plug-in's NaN or infinite default is null, not a bare ``NaN``."""
    from dataselect.output import finite_or_null

    return json.dumps(finite_or_null(described), indent=2, default=str, allow_nan=False)


def scorers_text(described: list[dict[str, Any]]) -> str:
    """A block per scorer: its one-line summary, what ``--policy auto`` picks, what it
    needs, then an aligned table of parameters (plain text, so it copies and greps)."""
    blocks = []
    for scorer in described:
        if "error" in scorer:
            # a plug-in's name and import error are its text: one line each
            blocks.append(f"{one_line(str(scorer['name']))}\n  cannot be listed: "
                          f"{one_line(str(scorer['error']))}")
            continue
        lines = [one_line(f"{scorer['name']}: {scorer['summary']}"),
                 f"  --policy auto: {scorer['default_policy']}"]
        if scorer["needs"]:
            lines.append(f"  needs: {', '.join(WORDS[key] for key in scorer['needs'])}")
        rows = [HEADINGS, *((one_line(p["name"]), one_line(p["type"]),
                             one_line(_default_text(p))) for p in scorer["parameters"])]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADINGS))]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)
                                   ).rstrip() for row in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _default_text(parameter: dict[str, Any]) -> str:
    if parameter["required"]:
        return "(required)"
    return value_text(parameter["default"]) or '""'


def _summary(cls: type) -> str:
    """The first paragraph of the class docstring, on one line, without Sphinx markup
    (``:class:`~a.b.C``` reads as ``C``)."""
    paragraph = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    paragraph = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", paragraph)
    return paragraph.replace("``", "")
