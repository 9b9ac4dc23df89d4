"""The contract every attribution method keeps, built-in or plug-in.

An :class:`Attributor` is built from its settings (one dataclass per method, its fields
the ``-p`` keys and a recipe's ``attribution.params``) and answers one question,
:meth:`Attributor.attribute`: how much each training row influences each query row. It
returns its scores in the form it computed them (:mod:`attribution.scores`): a dense
matrix, two sets of representations whose inner product is the score (the FAISS index
then serves the top-k without the matrix), or a search of a prebuilt index. Training and
query representations are computed in one call, not a ``cache(train)`` step and a later
``attribute(test)`` one: the model-based methods load each ensemble member once and take
both sides' gradients from it, and BIF's scores are covariances over draws that see both
sides at once. Where the result goes (top-k Parquet rows or a dense matrix folder) is the
job's business, the same for every method.

``reads`` says where the training side comes from: ``"pool"``, the rows themselves
(``--pool``, a recipe's selected rows), or ``"index"``, an index of the pool's features
built earlier (``--index``, the method's settings name it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from dataselect.errors import AttributionContractError
from dataselect.scoring import (
    PLUGIN_CONSTRUCTION,
    PluginKind,
    is_builtin,
    plugin_label,
    reporting_member,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from attribution.scores import Scores

READS = ("pool", "index")
# what dataselect calls of a plug-in method's own code (and its construction)
PLUGIN_METHODS = ("attribute", "response_spans")
ATTRIBUTION_PLUGIN = PluginKind("attribution method", "the fields of its settings class")


class Attributor(ABC):
    """An attribution method. Subclasses set ``name`` (their registered name),
    ``settings_class`` (a dataclass: the settings users give) and, where the training side
    is an index and not the rows, ``reads = "index"``."""

    name: ClassVar[str]
    settings_class: ClassVar[type]
    reads: ClassVar[str] = "pool"
    # other methods whose settings keys this one also takes (checked by their class, not
    # used): the built-in model-based methods once shared one set of keys, and a command
    # or recipe that gave trak a BIF key still runs
    shares_keys_with: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A plug-in method's own code (its ``attribute``, its settings' checks) reports
        its exceptions as one line naming it (:func:`dataselect.scoring.
        reporting_plugin_errors`), as a plug-in scorer's does."""
        super().__init_subclass__(**kwargs)
        if is_builtin(cls):
            return
        for name in PLUGIN_METHODS + PLUGIN_CONSTRUCTION:
            if name in cls.__dict__:
                setattr(cls, name, reporting_member(cls.__dict__[name], ATTRIBUTION_PLUGIN))
        settings = cls.__dict__.get("settings_class")
        if isinstance(settings, type) and not is_builtin(settings):
            for name in PLUGIN_CONSTRUCTION:
                if name in settings.__dict__:
                    setattr(settings, name, reporting_member(
                        settings.__dict__[name], ATTRIBUTION_PLUGIN, owner=cls))

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @property
    def response_spans(self) -> bool:
        """Whether the rows it is given mark their response tokens (chat and
        prompt-completion records: gradient methods count only those)."""
        return True

    @abstractmethod
    def attribute(self, train: pa.Table | None, queries: Sequence[pa.Table]) -> Scores:
        """The scores of the training rows for the queries.

        ``train``: the training rows as one scoring view (``id``, ``text`` and, with
        :attr:`response_spans`, their response spans) when :attr:`reads` is ``"pool"``;
        None when it is ``"index"`` (the settings name the index). ``queries``: the query
        rows as scoring views, one per table read, ids unique across them."""


CONTRACT = ("attribute must return one of attribution.scores' forms (ScoreMatrix, "
            "InnerProducts, IndexSearch) whose train_ids and query_ids are the ids of the "
            "rows it was given, in their order, with a finite score for each pair")


def checked_attribute(attributor: Attributor, train: pa.Table | None,
                      queries: Sequence[pa.Table]) -> Scores:
    """``attributor.attribute(train, queries)`` once what it returned keeps the contract
    (:data:`CONTRACT`): the one place every attribute job (and recipe) receives scores,
    from built-in methods and plug-ins alike.

    Why: the top-k writer pairs the i-th score row with the i-th training id, so a plug-in
    whose matrix had 299 rows for 300 training ids, or whose ids were not the pool's, were
    in another order or repeated one, wrote scores beside the wrong ids and exited 0;
    ``None`` or integer ids were tracebacks, and NaN or infinite scores were written."""
    scores = attributor.attribute(train, queries)

    def broken(what: str) -> AttributionContractError:
        return AttributionContractError(f"{plugin_label(type(attributor), ATTRIBUTION_PLUGIN)}"
                                        f" {what}; {CONTRACT}")

    from attribution.scores import Scores

    if not isinstance(scores, Scores):
        raise broken(f"returned a {type(scores).__name__}, not one of attribution.scores' "
                     "forms")
    query_ids = [one for view in queries for one in view["id"].to_pylist()]
    _check_ids(list(scores.query_ids), query_ids, "query", broken)
    if train is not None:
        _check_ids(list(scores.train_ids), train["id"].to_pylist(), "training", broken)
    else:  # the training side is an index the method read: its ids, each once
        _check_unique(list(scores.train_ids), broken)
    problem = scores.problem()
    if problem is not None:
        raise broken(f"returned {problem}")
    return scores


def _check_ids(got: list[Any], expected: list[str], side: str, broken: Any) -> None:
    """``got`` is ``expected``, id for id: scores are paired with ids by position."""
    if got == expected:
        return
    if len(got) != len(expected):
        raise broken(f"returned {len(got)} {side} ids for {len(expected)} {side} rows")
    at = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    if got[at] in got[:at]:
        raise broken(f"returned {side} id {got[at]!r} twice (at positions "
                     f"{got.index(got[at])} and {at})")
    raise broken(f"returned {side} id {got[at]!r} at position {at}, where the {side} rows "
                 f"it was given have {expected[at]!r}")


def _check_unique(ids: list[Any], broken: Any) -> None:
    seen: dict[Any, int] = {}
    for at, one in enumerate(ids):
        if not isinstance(one, str):
            raise broken(f"returned training id {one!r} at position {at}, not a string")
        if one in seen:
            raise broken(f"returned training id {one!r} twice (at positions {seen[one]} and "
                         f"{at})")
        seen[one] = at


def one_table(views: Sequence[pa.Table]) -> pa.Table:
    """Scoring views as one table (a method that takes all its query rows at once)."""
    import pyarrow as pa

    return views[0] if len(views) == 1 else pa.concat_tables(views,
                                                             promote_options="permissive")
