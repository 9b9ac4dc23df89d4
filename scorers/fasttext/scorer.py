"""fastText classifier scores: P(target) from a classifier trained target-vs-pool, or one
label's probability under a model the user brings.

* **Trained** (no ``model`` given): the heuristic-classification baseline of the DSIR paper
  and the DCLM recipe. A supervised fastText model with word bigrams learns the target's
  documents (``__label__target``) against a seeded sample of the pool (``__label__pool``);
  a document's score is P(target). Training runs on one thread with a fixed seed and a
  seeded line order, so the same inputs give the same model bytes.
* **Given** (``model=PATH``, ``label=NAME``): a quality classifier or a language-ID model
  such as ``lid.176.bin``; the score is P(label). The file is checked when the scorer is
  fitted (exists, loads, is supervised, has the label), so a bad path fails in the client
  with its name, not later inside a worker.

fastText reads one line per example and splits on whitespace, so every text is normalised
the same way for training and scoring: each run of whitespace (newlines included) becomes
one space, and leading and trailing whitespace is dropped (``lowercase`` optionally folds
case, for models trained on lowercased text).

A loaded model lives in a per-process cache keyed by its fingerprint, so each worker loads
it once; the scorer itself pickles only the model's bytes (trained) or its path (given).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataselect import checks, storage
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import Runner, default_runner, step_progress
from dataselect.fingerprint import file_fingerprint
from dataselect.sampling import sample_rows
from dataselect.scoring import Scorer, StartedFit
from dataselect.temporary import checked_temporary_folder
from scorers.fasttext.model_file import check_model_file

LABEL_PREFIX = "__label__"
TARGET_LABEL, POOL_LABEL = "target", "pool"
MIN_NEGATIVES = 1000
# the training process runs this very file (not ``-m scorers.fasttext.train``, which a
# checkout in the working directory, first on the child's path, could answer with its own)
TRAINER = str(Path(__file__).with_name("train.py"))
TRAINER_CODE = "import runpy, sys; runpy.run_path(sys.argv[1])['main'](sys.argv[2:])"
# glibc's MALLOC_MMAP_THRESHOLD_ in the training process: blocks this large come straight
# from the kernel, zeroed (see TrainingProcess)
MMAP_THRESHOLD = 128 * 1024

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def normalize_texts(texts: pa.Array, lowercase: bool = False) -> pa.Array:
    """One line per text: whitespace runs -> one space, trimmed; optionally lowercased."""
    texts = pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"[\s\v\x00]+", " "))
    return pc.utf8_lower(texts) if lowercase else texts


def _load(path: str, trained: bool = False) -> Any:
    """Load a fastText model, turning the library's errors into one naming the file
    (``trained``: the model this scorer trained, named by its training instead). Its
    layout is checked first (:func:`~scorers.fasttext.model_file.check_model_file`): the
    library trusts its header, and a corrupt one aborted the process (a heap overflow, a
    division by zero) where no Python error could name the file."""
    import fasttext

    checks.check_regular_file(path)  # a FIFO or a device is named as such, not "not found"
    if not os.path.isfile(path):
        raise InputError("fastText model file not found", where=path, field="model")
    try:
        check_model_file(path)
    except OSError as error:
        raise InputError(f"cannot read the fastText model ({error.strerror or error})",
                         where=path, field="model") from None
    try:
        model = fasttext.load_model(path)
    except (ValueError, RuntimeError, MemoryError, OSError) as error:
        raise InputError(f"not a readable fastText model ({error})", where=path,
                         field="model") from None
    _check_complete(model, path, trained)
    return model


def _check_complete(model: Any, path: str, trained: bool = False) -> None:
    """The weights must be finite: a NaN or infinite one loads, and fastText's predict
    then fails with a bare ``RuntimeError: Encountered NaN.`` in every worker (a quantized
    model's are met there, in :meth:`FastText.score_batch`). A truncated file, which
    fastText loads without complaint, was refused before loading
    (:func:`~scorers.fasttext.model_file.check_model_file`: the file must end where its
    header says)."""
    if model.is_quantized():
        return
    matrices = [np.asarray(model.f.getInputMatrix()), np.asarray(model.f.getOutputMatrix())]
    if not all(_finite(matrix) for matrix in matrices):
        raise _not_finite(path, trained)


# rows of a weight matrix checked at a time: a bounded temporary, whatever the model's size
FINITE_CHECK_ROWS = 65_536


def _finite(matrix: np.ndarray) -> bool:
    return all(np.isfinite(matrix[start:start + FINITE_CHECK_ROWS]).all()
               for start in range(0, len(matrix), FINITE_CHECK_ROWS))


def _not_finite(path: str | None, trained: bool) -> InputError:
    """The one line for a model whose weights are NaN or infinite (it computes NaN)."""
    if trained:
        return InputError("the fastText classifier trained here has NaN or infinite "
                          "weights (its training diverged); lower lr", field="lr")
    return InputError("fastText model has NaN or infinite weights, so it computes NaN for "
                      "every text: use a model whose weights are finite", where=path,
                      field="model")


@dataclass
class FastText(Scorer):
    """P(label) under a fastText classifier (trained target-vs-pool, or given)."""

    name: ClassVar[str] = "fasttext"
    trains_in_background: ClassVar[bool] = True  # start_fit returns while it trains

    model: str | None = None
    label: str | None = None
    negatives: int | None = None
    dim: int = 32
    epoch: int = 25
    lr: float = 0.2
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 2**16
    lowercase: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model is None and self.label is not None:
            raise InputError("label is for a given model (model=PATH); a trained classifier "
                             "scores P(target)", field="label")
        if self.model is not None and not self.label:
            raise InputError("a given model needs label=NAME: whose probability to score",
                             field="label")
        checks.optional(checks.check_count, self.negatives, "negatives")
        # fastText takes its settings (and its seed) as C ints
        for name in ("dim", "epoch", "word_ngrams", "min_count", "bucket"):
            checks.check_count(getattr(self, name), name, maximum=checks.C_INT_MAX)
        checks.check_positive(self.lr, "lr")
        checks.check_seed(self.seed, maximum=checks.C_INT_MAX)
        self.model_bytes_: bytes | None = None
        self.labels_: list[str] = []
        self.fit_stats_: dict[str, Any] = {}

    @property
    def scored_label(self) -> str:
        label = self.label or TARGET_LABEL
        return label if label.startswith(LABEL_PREFIX) else LABEL_PREFIX + label

    def config(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ fit

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> FastText:
        if self.model is not None:
            return self._check_given_model()
        with self.start_fit(target, pool, runner) as training, \
                step_progress(runner, "train:fasttext", 1) as advance:
            # training runs in its own process: a stage of its own in the job's table
            training.wait()
            advance(1)
        return self

    def start_fit(self, target: Corpus, pool: Corpus | None = None,
                  runner: Runner = default_runner) -> PendingFit:
        """Fit up to the training: sample the pool now (on ``runner``) and start training
        the model in the background; ``wait()`` on the result finishes the fit (leaving its
        ``with`` block first stops the training). ``auto`` fits its other chosen
        candidates meanwhile. A given model is only checked."""
        if self.model is not None:
            return PendingFit(self._check_given_model())
        sample = self._sample(target, pool, runner)
        folder = tempfile.TemporaryDirectory(prefix="dataselect-fasttext-",
                                             dir=checked_temporary_folder())
        try:
            train_path, model_path = self._write_training(sample, folder.name)
            process = TrainingProcess(train_path, model_path, self._train_params(),
                                      os.path.join(folder.name, "stderr.txt"))
        except BaseException:
            folder.cleanup()
            raise
        return PendingFit(self, sample, process, folder)

    def _sample(self, target: Corpus, pool: Corpus | None, runner: Runner) -> _Sample:
        """The target's rows and a seeded sample of the pool's (:func:`sample_rows`: the
        pool's ids, then the sampled rows' text)."""
        if pool is None:
            raise InputError("a trained fastText scorer needs the pool for negatives: "
                             "pass pool=")
        positives = [target.scoring_view(t) for t in target.iter_tables()]
        positives = pa.concat_tables(positives) if positives else None
        where = ", ".join(target.files)
        if positives is None or positives.num_rows == 0:
            raise EmptyCorpusError("target holds no records", where=where)
        wanted = self.negatives or max(MIN_NEGATIVES, positives.num_rows)
        negatives, pool_rows = sample_rows(pool, wanted, self.seed, runner, "fit:fasttext",
                                           "fit-fasttext", view=True)
        return _Sample(positives, negatives, int(pool_rows))

    def _write_training(self, sample: _Sample, folder: str) -> tuple[str, str]:
        """Write the sample's training file into ``folder``, lines in a seeded order; its
        path and the model's."""
        lines = [f"{LABEL_PREFIX}{TARGET_LABEL} {text}" for text in
                 normalize_texts(sample.positives["text"], self.lowercase).to_pylist()]
        lines += [f"{LABEL_PREFIX}{POOL_LABEL} {text}" for text in
                  normalize_texts(sample.negatives["text"], self.lowercase).to_pylist()]
        # fastText reads its file in order: shuffle once, seeded, so classes interleave
        order = np.random.default_rng(self.seed).permutation(len(lines))
        train_path = os.path.join(folder, "train.txt")
        with open(train_path, "w", encoding="utf-8") as f:
            f.writelines(lines[i] + "\n" for i in order)
        return train_path, os.path.join(folder, "model.bin")

    def _train_params(self) -> dict[str, Any]:
        return {"dim": self.dim, "epoch": self.epoch, "lr": self.lr,
                "wordNgrams": self.word_ngrams, "minCount": self.min_count,
                "bucket": self.bucket, "thread": 1, "seed": self.seed, "verbose": 0}

    def _finish(self, sample: _Sample, model_bytes: bytes) -> FastText:
        self.model_bytes_ = model_bytes
        self.fingerprint_ = hashlib.sha256(self.model_bytes_).hexdigest()[:16]
        self.labels_ = [LABEL_PREFIX + TARGET_LABEL, LABEL_PREFIX + POOL_LABEL]
        self.fit_stats_ = {"positives": sample.positives.num_rows,
                           "negatives": sample.negatives.num_rows,
                           "pool_rows": sample.pool_rows, "model_bytes": len(model_bytes)}
        return self

    def _check_given_model(self) -> FastText:
        path = storage.absolute(str(self.model))  # as the system reads it, for the workers
        model = _load(path)
        labels = list(model.get_labels())
        if not labels or not str(labels[0]).startswith(LABEL_PREFIX):
            raise InputError("is not a supervised fastText classifier (it has no labels)",
                             where=path, field="model")
        if self.scored_label not in labels:
            shown = ", ".join(label.removeprefix(LABEL_PREFIX) for label in labels[:20])
            raise InputError(f"has no label {self.label!r}; it has: {shown}"
                             + (" ..." if len(labels) > 20 else ""), where=path, field="label")
        self.model = path
        self.labels_ = labels
        self.fingerprint_ = file_fingerprint(path)["xxh3_128"][:16]
        self.fit_stats_ = {"model": path, "labels": len(labels), "label": self.scored_label}
        return self

    # ------------------------------------------------------------------ score

    def _model(self) -> Any:
        key = self.fit_fingerprint()
        with _MODELS_LOCK:
            model = _MODELS.get(key)
            if model is None:
                model = self._load_model()
                _MODELS[key] = model
        return model

    def _load_model(self) -> Any:
        if self.model is not None:
            return _load(self.model)
        if self.model_bytes_ is None:
            raise RuntimeError("FastText.score_batch called before fit")
        handle, path = tempfile.mkstemp(prefix="dataselect-fasttext-", suffix=".bin",
                                        dir=checked_temporary_folder())
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(self.model_bytes_)
            return _load(path, trained=True)
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)

    def score_batch(self, batch: pa.Table) -> pa.Table:
        model = self._model()
        texts = normalize_texts(batch["text"], self.lowercase).to_pylist()
        try:
            labels, probabilities = model.predict(texts, k=-1, threshold=0.0)
        except RuntimeError as error:  # a quantized model's weights are not checked ahead
            if "NaN" not in str(error):
                raise
            raise _not_finite(self.model, self.model is None) from None
        wanted = self.scored_label
        score = np.zeros(len(texts))
        for row, (names, probs) in enumerate(zip(labels, probabilities)):
            for name, prob in zip(names, probs):
                if name == wanted:
                    score[row] = prob
                    break
        # fastText adds 1e-5 inside its softmax; keep scores probabilities
        return pa.table({"id": batch["id"], "score": np.clip(score, 0.0, 1.0)})


@dataclass(frozen=True)
class _Sample:
    """What a trained classifier learns from: the target's rows, the pool's sample."""

    positives: pa.Table
    negatives: pa.Table
    pool_rows: int


class PendingFit(StartedFit):
    """A fit whose model is training (:meth:`FastText.start_fit`). :meth:`wait` finishes it;
    :meth:`close` (or leaving a ``with`` block) stops the training if it still runs and
    removes its files, so that a failure elsewhere leaves no process behind."""

    scorer: FastText

    def __init__(self, scorer: FastText, sample: _Sample | None = None,
                 process: TrainingProcess | None = None,
                 folder: tempfile.TemporaryDirectory | None = None) -> None:
        super().__init__(scorer)
        self.sample, self.process, self.folder = sample, process, folder

    def wait(self) -> FastText:
        """The fitted scorer, once its model has trained (raises if training failed)."""
        try:
            if self.process is not None and self.sample is not None:
                self.process.wait()
                _load(self.process.model_path, trained=True)  # diverged: said here, once
                self.scorer._finish(self.sample, Path(self.process.model_path).read_bytes())
            return self.scorer
        finally:
            self.close()

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.folder is not None:
            self.folder.cleanup()


class TrainingProcess:
    """One model training in a fresh Python process of its own, its stderr kept in
    ``log_path``: a fresh process is what makes training deterministic.

    fastText initialises its input matrix in ten blocks, one per training thread, and
    leaves the blocks of missing threads as allocated (facebookresearch/fastText issue
    #1061). Since that matrix became an uninitialised aligned vector, one thread leaves
    90 % of it as whatever the heap held: a second model trained in the same process can
    start from the first one's leftovers, and diverge to NaN. A new process, told by
    glibc's ``MALLOC_MMAP_THRESHOLD_`` to take large blocks straight from the kernel,
    gets zeroed pages, so those rows start at zero every time. The process runs
    :mod:`scorers.fasttext.train`, which imports fastText only. (A subprocess, not
    ``multiprocessing``, so user scripts without a ``__main__`` guard keep working.)
    """

    def __init__(self, train_path: str, model_path: str, params: dict[str, Any],
                 log_path: str) -> None:
        self.model_path, self.log_path = model_path, log_path
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
        command = [sys.executable, "-c", TRAINER_CODE, TRAINER, train_path, model_path,
                   json.dumps(params)]
        with open(log_path, "wb") as log:  # the child holds its own copy of the handle
            self._process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=log)

    def wait(self) -> None:
        """Block until the process ends; a failure raises with its last line of stderr."""
        code = self._process.wait()
        if code != 0 or not os.path.exists(self.model_path):
            text = Path(self.log_path).read_text(encoding="utf-8", errors="replace")
            message = (text.strip().splitlines() or ["no message"])[-1]
            hint = "; lower lr" if "NaN" in message else ""
            raise InputError(f"fastText training failed: {message}{hint}",
                             field="lr" if hint else None)
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.path.getsize(self.model_path) >= limit:
            # fastText's C++ stream stops at the file-size limit without a word (exit 0):
            # the cut model was then refused as "truncated or corrupt", blaming the file
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), self.model_path)

    def stop(self) -> None:
        """End the process if it still runs (a fit abandoned after an error elsewhere)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
