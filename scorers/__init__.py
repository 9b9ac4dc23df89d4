"""Scorers: one module per method, each implementing :class:`dataselect.scoring.Scorer`.

``SCORERS`` maps the names used on the command line and in recipes to their classes. Scorers
register through the ``dataselect.scorers`` entry-point group, so a package outside this
repository adds one with one module and one line of packaging metadata::

    [project.entry-points."dataselect.scorers"]
    myscorer = "mypackage.myscorer:MyScorer"

Classes are imported when first looked up, not when this package is imported: listing the
names costs nothing, and a job imports only the scorer it runs (the model-based ones pull
in torch and transformers). The built-in scorers are also listed here, so a source checkout
whose packaging metadata is not installed still finds them; an installed plug-in cannot
take a built-in's name.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from dataselect.errors import InputError

if TYPE_CHECKING:
    from dataselect.scoring import Scorer

GROUP = "dataselect.scorers"
# what a scorer may declare as its default_policy (what --policy auto applies to its scores)
SCORER_POLICIES = ("top_k", "importance_resample", "round_robin")
BUILTIN = {
    "auto": "scorers.auto.scorer:Auto",
    "bads": "scorers.bads.scorer:Bads",
    "dsir": "scorers.dsir:DSIR",
    "embed": "scorers.embed:Embed",
    "fasttext": "scorers.fasttext.scorer:FastText",
    "less": "scorers.less:Less",
    "zipfit": "scorers.zipfit.scorer:ZipFit",
}


class ScorerRegistry(Mapping[str, "type[Scorer]"]):
    """Scorer classes by name, from the built-ins and the ``dataselect.scorers`` entry
    points, each imported on first lookup."""

    def __init__(self) -> None:
        self._targets: dict[str, str] | None = None
        self._classes: dict[str, type[Scorer]] = {}

    def refresh(self) -> None:
        """Look for entry points again (after installing a plug-in in this process)."""
        self._targets = None
        self._classes = {}

    def names(self) -> ScorerNames:
        """The registered names, as argparse ``choices``: nothing is looked up until a
        name is checked or listed."""
        return ScorerNames(self)

    def _entries(self) -> dict[str, str]:
        if self._targets is None:
            from importlib import metadata  # tens of ms: only when a name is looked up

            targets = dict(BUILTIN)
            for entry in metadata.entry_points(group=GROUP):
                targets.setdefault(entry.name, entry.value)
            self._targets = targets
        return self._targets

    def __getitem__(self, name: str) -> type[Scorer]:
        if name not in self._classes:
            self._classes[name] = _load(name, self._entries()[name])
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries()))

    def __len__(self) -> int:
        return len(self._entries())


class ScorerNames(Collection[str]):
    """The registry's names, sorted. ``in`` checks a name without importing its class
    (the registry's own ``in``, a Mapping's, imports it), and neither the entry points nor
    the classes are read before the first check: ``dataselect --help`` builds a parser with
    these as ``--scorer`` choices and never consults them."""

    def __init__(self, registry: ScorerRegistry) -> None:
        self._registry = registry

    def __contains__(self, name: object) -> bool:
        return name in self._registry._entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)


def _load(name: str, target: str) -> type[Scorer]:
    """Import ``module:Class`` and check that it keeps the Scorer contract under its name.

    The base class is imported here, not with this package, so that listing scorer names
    (argparse choices for ``dataselect --help``) loads no pandas, pyarrow or Dask."""
    from dataselect.layout import FOLDER_NAME, FOLDER_NAME_RULE
    from dataselect.scoring import Scorer

    if not FOLDER_NAME.match(name):  # its score store is the folder .scores/<name>
        raise InputError(f"scorer {name!r} ({target}) has a name that cannot be one: a "
                         f"scorer's name must be {FOLDER_NAME_RULE}", field="scorer")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"scorer {name!r} is registered as {target!r}, which cannot be "
                         f"imported ({exc}); reinstall the package that provides it",
                         field="scorer") from None
    except (Exception, SystemExit) as exc:  # the plug-in's module failed while importing
        raise InputError(f"scorer {name!r} ({target}) failed while its module was imported "
                         f"({type(exc).__name__}: {exc}); the fault is in the plug-in: tell "
                         "its author, or uninstall it", field="scorer") from None
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise InputError(f"scorer {name!r} ({target}) is not a dataselect Scorer subclass",
                         field="scorer")
    if cls.default_policy not in SCORER_POLICIES:
        raise InputError(f"scorer {name!r} ({target}) declares default_policy "
                         f"{cls.default_policy!r}; it must be one of "
                         f"{', '.join(SCORER_POLICIES)}", field="scorer")
    if getattr(cls, "name", None) != name:
        raise InputError(f"scorer {name!r} ({target}) calls itself {cls.name!r}; its class "
                         "attribute name must equal its registered name", field="scorer")
    return cls


SCORERS = ScorerRegistry()

_CLASS_NAMES = {target.partition(":")[2]: name for name, target in BUILTIN.items()}


def __getattr__(attribute: str) -> Any:
    """``from scorers import DSIR`` keeps working, importing only that scorer's module."""
    if attribute in _CLASS_NAMES:
        return SCORERS[_CLASS_NAMES[attribute]]
    raise AttributeError(f"module 'scorers' has no attribute {attribute!r}")


__all__ = ["DSIR", "SCORERS", "Auto", "Bads", "Embed", "FastText", "Less", "ZipFit"]
