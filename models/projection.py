"""Random projections of gradient features: a sparse Johnson–Lindenstrauss map (default)
and the dense seeded Rademacher matrix LESS itself uses.

Gradient features have as many dimensions as the model has trainable weights (LESS's
LoRA rank 128 on q/k/v/o: 14.7 million on SmolLM2-135M, over 100 million on a 7B model), so
LESS projects them to ``dim`` (8192) dimensions with a random matrix that keeps inner
products and norms within Johnson–Lindenstrauss bounds.

:class:`SparseProjection` (Kane & Nelson 2014, "Sparser Johnson–Lindenstrauss
transforms", block construction) gives every input coordinate ``s`` nonzeros of
``±1/sqrt(s)``: the ``dim`` outputs are cut into ``s`` blocks and the coordinate lands in
one output of each block, so its ``s`` outputs are distinct and every column has norm 1
exactly. Output and sign come from a counter-based hash of ``(seed, block, coordinate)``
written in integer arithmetic that never overflows int64, so any slice of the matrix is
computed on demand, on any device, with the same values (tested against a NumPy version);
nothing bigger than the index tensors is ever stored. Projecting costs ``s`` scatter-adds
per input value, linear in the gradient size, against ``dim`` multiply-adds for the dense
matrix (8192 / 4 = 2048 times fewer).

:class:`RademacherProjection` is the dense ``input_dim x dim`` sign matrix of LESS's
reference code (entries ``±1/sqrt(dim)``), cut into blocks of rows each generated from its
own seed derived from ``(seed, block number)``. It is kept for small inputs and as the
reference in tests: at LESS's settings it has 120 billion entries. Its blocks are
generated on the projection's device (CUDA's generator on a GPU), so features made on a GPU
and on a CPU use different matrices: the feature store records the device type for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Rows of R generated at once: bounds the temporary block to BLOCK_BYTES whatever ``dim``.
BLOCK_BYTES = 1 << 26
DEFAULT_CACHE_BYTES = 1 << 30


class RademacherProjection:
    """Projects concatenated parameter vectors of sizes ``sizes`` to ``dim`` dimensions.

    ``project`` takes the pieces (one ``(batch, size)`` tensor per parameter, in order), so
    a caller never builds the full concatenated vector. Blocks are cached on the device
    while their total stays under ``cache_bytes``; past that they are regenerated per call.
    """

    def __init__(self, sizes: Sequence[int], dim: int, seed: int = 0,
                 device: torch.device | str = "cpu", cache_bytes: int = DEFAULT_CACHE_BYTES):
        if dim < 1:
            raise ValueError(f"projection dim must be positive, got {dim}")
        self.sizes = [int(s) for s in sizes]
        self.dim, self.seed = int(dim), int(seed)
        self.device = torch.device(device)
        self.rows_per_block = max(1, BLOCK_BYTES // (4 * self.dim))
        self.cache = (sum(self.sizes) * self.dim * 4) <= cache_bytes
        self._blocks: dict[int, torch.Tensor] = {}
        # (piece index, start row inside the piece, rows, block number) for every block
        self.plan: list[tuple[int, int, int, int]] = []
        for piece, size in enumerate(self.sizes):
            for start in range(0, size, self.rows_per_block):
                self.plan.append((piece, start, min(self.rows_per_block, size - start),
                                  len(self.plan)))

    @property
    def input_dim(self) -> int:
        return sum(self.sizes)

    def block(self, number: int, rows: int) -> torch.Tensor:
        """Rows of ``R`` for block ``number``: ``(rows, dim)`` float32 of ``±1/sqrt(dim)``."""
        if number in self._blocks:
            return self._blocks[number]
        state = np.random.SeedSequence([self.seed, number]).generate_state(1, np.uint64)[0]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(state))
        signs = torch.randint(0, 2, (rows, self.dim), generator=generator, device=self.device,
                              dtype=torch.int8)
        block = (signs.float() * 2 - 1) / np.sqrt(self.dim)
        if self.cache:
            self._blocks[number] = block
        return block

    def project(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """``concat(pieces, dim=1) @ R`` as float32, shape ``(batch, dim)``."""
        if len(pieces) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} pieces, got {len(pieces)}")
        batch = pieces[0].shape[0]
        out = torch.zeros((batch, self.dim), dtype=torch.float32, device=self.device)
        flat = [p.reshape(batch, -1).to(self.device, torch.float32) for p in pieces]
        for piece, start, rows, number in self.plan:
            if flat[piece].shape[1] != self.sizes[piece]:
                raise ValueError(f"piece {piece} has {flat[piece].shape[1]} values, expected "
                                 f"{self.sizes[piece]}")
            out.addmm_(flat[piece][:, start:start + rows], self.block(number, rows))
        return out

    def matrix(self) -> torch.Tensor:
        """The whole ``R`` (tests and small inputs only: ``input_dim x dim`` floats)."""
        return torch.cat([self.block(n, rows) for _, _, rows, n in self.plan])


# ----------------------------------------------------------------------------- sparse JL

# Nonzeros per input coordinate, measured (benchmarks/bench_less_features.py, RESULTS.md):
# on SmolLM2-135M's LoRA r128 gradients projected to 8192, every s from 1 to 16 gives the
# cosine errors a dense matrix gives (the gradients spread over thousands to millions of
# effective coordinates). Where a few coordinates dominate each vector (synthetic Student-t
# rows), the largest cosine error is 5x a dense matrix's at s = 1, 3x at s = 4, 1.7x at 8.
# The cost is linear in s: at s = 4 projecting is 5-6 % of the per-example time on a CPU, at
# 8 it would near 10 %. s = 4 keeps a margin for concentrated gradients at half the cost of 8.
SPARSE_NONZEROS = 4
# Input coordinates whose entries are generated at once (temporaries: a few int64 per entry).
CHUNK_COORDINATES = 1 << 18
# Names the hash below; part of the feature description, so changing it refuses old features.
SPARSE_HASH = "lowbias32x2-v1"

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # C. Wellons' "lowbias32" (hash-prospector)
_SALT = 0x9E3779B9  # 2^32 / golden ratio: keeps seed 0 away from the all-zero key


def _mix32(x: int) -> int:
    """lowbias32 on a Python int in ``[0, 2^32)``: a bijective 32-bit integer hash."""
    x ^= x >> 16
    x = (x * _MULTIPLIERS[0]) & _MASK32
    x ^= x >> 15
    x = (x * _MULTIPLIERS[1]) & _MASK32
    return x ^ (x >> 16)


def _mix32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """:func:`_mix32` in place on an int64 tensor of values in ``[0, 2^32)``.

    ``x * c mod 2^32`` is computed from x's 16-bit halves, ``(lo * c + ((hi * c) mod 2^16)
    * 2^16) mod 2^32``, so no product exceeds 2^49: exact int64 arithmetic on every device,
    with no reliance on how a backend wraps an overflowing signed multiply."""
    for multiplier, shift in zip(_MULTIPLIERS, (16, 15)):
        x.bitwise_xor_(x >> shift)
        torch.bitwise_right_shift(x, 16, out=scratch)
        scratch.mul_(multiplier).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
        x.bitwise_and_(0xFFFF).mul_(multiplier).add_(scratch).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 16)
    return x


def block_keys(seed: int, nonzeros: int) -> list[int]:
    """The 32-bit key of each block ``j``: the hash absorbing ``seed`` (two 32-bit words,
    so any unsigned 64-bit seed) and ``j``."""
    key = _mix32(_SALT ^ (seed & _MASK32))
    key = _mix32(key ^ (seed >> 32 & _MASK32))
    return [_mix32(key ^ j) for j in range(nonzeros)]


class SparseProjection:
    """Sparse JL projection of concatenated parameter vectors of sizes ``sizes`` to ``dim``.

    Entry ``(i, j)`` for input coordinate ``i`` (its position in the concatenated vector)
    and block ``j < s``: ``h = mix(mix(key_j ^ lo32(i)) ^ hi32(i))`` with ``mix`` the
    lowbias32 hash; the output is ``start_j + floor((h mod 2^31) * size_j / 2^31)`` inside
    block ``j`` (``[start_j, start_j + size_j)``, ``start_j = floor(j dim / s)``) and the
    sign is ``-`` when ``h``'s top bit is set. Each coordinate's value is added to its ``s``
    outputs; signs are folded into the output index (a negative entry adds to output
    ``dim + o``, and the two halves are subtracted at the end), so projecting is ``s``
    ``scatter_add_`` calls per chunk of a piece, no temporary the size of the input.

    ``project`` takes the pieces (one ``(batch, size)`` tensor per parameter, in order),
    so a caller never builds the full concatenated vector. The index tensors (int32, 4
    bytes per nonzero: 236 MB for LESS's 14.7 M LoRA parameters at s = 4) are cached per
    chunk on the device while they fit in ``cache_bytes``; chunks past that are rehashed on
    every call (0.1-0.2 µs per coordinate on one CPU thread at s = 4).
    """

    def __init__(self, sizes: Sequence[int], dim: int, seed: int = 0,
                 device: torch.device | str = "cpu", cache_bytes: int = DEFAULT_CACHE_BYTES,
                 nonzeros: int = SPARSE_NONZEROS):
        if dim < 1:
            raise ValueError(f"projection dim must be positive, got {dim}")
        if nonzeros < 1:
            raise ValueError(f"nonzeros must be positive, got {nonzeros}")
        self.sizes = [int(s) for s in sizes]
        self.dim, self.seed = int(dim), int(seed)
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an unsigned 64-bit integer, got {seed}")
        self.nonzeros = min(int(nonzeros), self.dim)
        self.device = torch.device(device)
        self.keys = block_keys(self.seed, self.nonzeros)
        self.starts = [j * self.dim // self.nonzeros for j in range(self.nonzeros + 1)]
        self.scale = 1 / np.sqrt(self.nonzeros)
        # (piece, start inside the piece, length, global offset) of every chunk, in order
        self.plan: list[tuple[int, int, int, int]] = []
        offset = 0
        for piece, size in enumerate(self.sizes):
            for start in range(0, size, CHUNK_COORDINATES):
                length = min(CHUNK_COORDINATES, size - start)
                self.plan.append((piece, start, length, offset + start))
            offset += size
        budget, self.cached_chunks = int(cache_bytes), set()
        for number, (_, _, length, _) in enumerate(self.plan):
            if 4 * self.nonzeros * length > budget:
                break
            budget -= 4 * self.nonzeros * length
            self.cached_chunks.add(number)
        self._cache: dict[int, torch.Tensor] = {}

    @property
    def input_dim(self) -> int:
        return sum(self.sizes)

    @property
    def cache(self) -> bool:
        """Whether every chunk's indices are kept after their first use."""
        return len(self.cached_chunks) == len(self.plan)

    def folded_indices(self, start: int, stop: int) -> torch.Tensor:
        """``(s, stop - start)`` int64 on the device: for global coordinates ``start`` to
        ``stop`` and each block, the output index, plus ``dim`` where the sign is negative."""
        coordinate = torch.arange(start, stop, dtype=torch.int64, device=self.device)
        high = coordinate >> 32
        low = coordinate.bitwise_and_(_MASK32)
        scratch = torch.empty_like(low)
        out = torch.empty((self.nonzeros, stop - start), dtype=torch.int64, device=self.device)
        for j, key in enumerate(self.keys):
            h = _mix32_(torch.bitwise_xor(low, key, out=out[j]), scratch)
            h = _mix32_(h.bitwise_xor_(high), scratch)
            negative = h >> 31
            size = self.starts[j + 1] - self.starts[j]
            h.bitwise_and_(0x7FFFFFFF).mul_(size).bitwise_right_shift_(31)
            h.add_(negative.mul_(self.dim).add_(self.starts[j]))
        return out

    def entries(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs, signs)``, each ``(s, stop - start)``: where coordinates ``start`` to
        ``stop`` land and with which sign (``±1``; the value is ``sign / sqrt(s)``)."""
        folded = self.folded_indices(start, stop)
        negative = folded >= self.dim
        return folded - self.dim * negative, 1 - 2 * negative.to(torch.int8)

    def _chunk_indices(self, number: int) -> torch.Tensor:
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        _, _, length, offset = self.plan[number]
        indices = self.folded_indices(offset, offset + length)
        if number in self.cached_chunks:
            self._cache[number] = indices.to(torch.int32)
        return indices

    def project(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """``concat(pieces, dim=1) @ M`` as float32, shape ``(batch, dim)``."""
        if len(pieces) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} pieces, got {len(pieces)}")
        batch = pieces[0].shape[0]
        flat = [p.reshape(batch, -1) for p in pieces]
        for piece, (values, size) in enumerate(zip(flat, self.sizes)):
            if values.shape[1] != size:
                raise ValueError(f"piece {piece} has {values.shape[1]} values, expected {size}")
        folded = torch.zeros((batch, 2 * self.dim), dtype=torch.float32, device=self.device)
        for number, (piece, start, length, _) in enumerate(self.plan):
            values = flat[piece][:, start:start + length].to(self.device, torch.float32)
            for row in self._chunk_indices(number):
                folded.scatter_add_(1, row.long().expand(batch, length), values)
        return (folded[:, :self.dim] - folded[:, self.dim:]) * self.scale

    def matrix(self) -> torch.Tensor:
        """The whole ``input_dim x dim`` matrix, written entry by entry from
        :meth:`entries` (tests and small inputs only)."""
        out = torch.zeros((self.input_dim, self.dim), dtype=torch.float32)
        outputs, signs = self.entries(0, self.input_dim)
        rows = torch.arange(self.input_dim)
        for j in range(self.nonzeros):
            out[rows, outputs[j].cpu()] = signs[j].cpu().float() * self.scale
        return out


def make_projection(kind: str, sizes: Sequence[int], dim: int, seed: int = 0,
                    device: torch.device | str = "cpu", cache_bytes: int = DEFAULT_CACHE_BYTES
                    ) -> SparseProjection | RademacherProjection:
    """A projection by name: ``"sparse"`` (:class:`SparseProjection`, the default of LESS)
    or ``"rademacher"`` (:class:`RademacherProjection`)."""
    if kind == "sparse":
        return SparseProjection(sizes, dim, seed, device, cache_bytes)
    if kind == "rademacher":
        return RademacherProjection(sizes, dim, seed, device, cache_bytes)
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")


PROJECTIONS = ("sparse", "rademacher")
