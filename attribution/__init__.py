"""Attribution: which training rows most influence given query rows.

One contract (:class:`attribution.base.Attributor`), one module per method, and one
registry, ``ATTRIBUTIONS``, that the command line (``dataselect attribute --method``),
recipes (``attribution: method:``) and the feature jobs look methods up in by name:

    less    cosine of LESS (or any) features in the pool's FAISS index    (:mod:`.less`)
    trak    TRAK: output gradients with the kernel inverse folded in      (:mod:`.trak`)
    tracin  TracIn: learning-rate-weighted loss-gradient products         (:mod:`.tracin`)
    bif     BIF: Bayesian influence by streamed SGLD covariance           (:mod:`.bif`)

Beside them: what the model-based methods share (:mod:`.ensemble`: the model and its
LoRA checkpoints, settings and batches; :mod:`.output_gradients`: the output functions
and their projected gradients), the FAISS index (:mod:`.index`), the score forms a method
returns (:mod:`.scores`), how ``-p`` settings are read (:mod:`.settings`) and the writers
of top-k rows and dense matrices (:mod:`.output`).

Methods register through the ``dataselect.attribution`` entry-point group, so a package
outside this repository adds one with one module and one line of packaging metadata::

    [project.entry-points."dataselect.attribution"]
    mymethod = "mypackage.mymethod:MyMethod"

This package imports nothing heavy: listing the names (the ``--method`` choices of
``dataselect --help``) loads no method.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from dataselect.errors import InputError
from dataselect.registry import Registry, check_own_name, import_class

if TYPE_CHECKING:
    from attribution.base import Attributor

GROUP = "dataselect.attribution"
# the built-ins, in the order --method lists them (the default, less, first)
BUILTIN = {
    "less": "attribution.less:LessCosine",
    "trak": "attribution.trak:TrakAttribution",
    "tracin": "attribution.tracin:TracInAttribution",
    "bif": "attribution.bif:BifAttribution",
}


def _load(name: str, target: str) -> type[Attributor]:
    """Import ``module:Class`` and check that it keeps the Attributor contract under its
    name. The base class is imported here, not with this package, so that listing the
    names loads no pyarrow."""
    from attribution.base import READS, Attributor

    cls = import_class("attribution method", name, target, "--method")
    if not (isinstance(cls, type) and issubclass(cls, Attributor)):
        raise InputError(f"attribution method {name!r} ({target}) is not a dataselect "
                         "Attributor subclass", field="--method")
    if cls.reads not in READS:
        raise InputError(f"attribution method {name!r} ({target}) declares reads "
                         f"{cls.reads!r}; it must be one of {', '.join(READS)}",
                         field="--method")
    check_own_name("attribution method", name, target, cls, "--method")
    return cls


class AttributionRegistry(Registry["Attributor"]):
    """Attribution methods by name: the built-ins in their own order, then plug-ins
    sorted."""

    def order(self, names: Collection[str]) -> list[str]:
        return [n for n in BUILTIN if n in names] + sorted(set(names) - set(BUILTIN))


ATTRIBUTIONS = AttributionRegistry(GROUP, BUILTIN, _load)


def pool_methods() -> list[str]:
    """The methods that read the pool's rows themselves (``--pool``; every method a recipe
    may run), as opposed to an index of the pool's features (``--index``)."""
    return [name for name in ATTRIBUTIONS if ATTRIBUTIONS[name].reads == "pool"]
