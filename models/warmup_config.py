"""The LoRA warmup's settings and sample, kept apart from the training code.

Why a module of its own: recipes and the command line check warmup settings before any
work, and importing the trainer (torch, peft) for that would cost seconds on every
command, including ones that train nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from dataselect import checks
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError
from dataselect.sampling import sample_mask
from dataselect.scoring import BLANK_TEXT


@dataclass
class WarmupConfig:
    """LoRA warmup settings; defaults are the LESS paper's."""

    fraction: float = 0.05
    epochs: int = 4
    rank: int = 128
    alpha: int = 512
    dropout: float = 0.1
    target_modules: Sequence[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0

    def check(self) -> None:
        """Ranges from :mod:`dataselect.checks` (finite numbers, integer counts)."""
        checks.check_fraction(self.fraction, "fraction")
        for name in ("epochs", "rank", "alpha", "batch_size"):
            checks.check_count(getattr(self, name), name)
        checks.check_count(self.max_length, "max_length", minimum=2)
        checks.check_positive(self.lr, "lr")
        checks.check_number(self.dropout, "dropout", at_least=0, below=1)
        checks.check_probability(self.warmup_ratio, "warmup_ratio")
        checks.check_nonnegative(self.weight_decay, "weight_decay")
        # each epoch seeds torch with seed * 1000 + epoch, which must stay below 2**64
        checks.check_seed(self.seed, maximum=(checks.SEED_MAX - self.epochs) // 1000)


def sample_pool(pool: Corpus, fraction: float, seed: int) -> tuple[pa.Table, int]:
    """The warmup sample: rendered text and response spans of a seeded share of the pool,
    without its blank rows, and how many blank rows were left out. Why: a row that is
    whitespace, zero-width or a BOM only is never selected (``empty_text``), so training
    on it would teach the model nothing the selection wants."""
    parts, blank = [], 0
    for table in pool.iter_tables():
        keep = sample_mask(table["id"], fraction, seed)
        if keep.any():
            view = pool.scoring_view(table.filter(pa.array(keep)), response_spans=True)
            written = has_text(view)
            blank += view.num_rows - pc.sum(written).as_py()
            parts.append(view.filter(written))
    if not parts:
        raise EmptyCorpusError(f"a {fraction:.2%} sample of the pool is empty; raise fraction",
                               where=", ".join(pool.files))
    if not any(part.num_rows for part in parts):
        raise EmptyCorpusError(
            f"every row of the {fraction:.2%} sample of the pool ({blank} rows) is blank "
            "(whitespace, zero-width or BOM only), and blank rows are never trained on; "
            "give a pool with text, or raise fraction", where=", ".join(pool.files))
    return pa.concat_tables(parts), blank


def has_text(view: pa.Table) -> pa.ChunkedArray:
    """Which rows of a scoring view hold text: not blank as :data:`BLANK_TEXT` defines it
    (the rows selection filters as ``empty_text``)."""
    return pc.invert(pc.match_substring_regex(view["text"], BLANK_TEXT))
