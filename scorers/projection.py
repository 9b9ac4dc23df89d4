"""Seeded Rademacher random projection, computed block by block.

Gradient features have as many dimensions as the model has trainable weights (LoRA on a
7B model: over 100 million), so LESS projects them to ``dim`` (8192) dimensions with a
random sign matrix ``R`` (entries ``±1/sqrt(dim)``), which keeps inner products and norms
within Johnson–Lindenstrauss bounds. ``R`` is never held whole: it is cut into blocks of
rows, each generated from its own seed derived from ``(seed, block number)``, so memory
stays bounded for any parameter count, any block can be regenerated on demand, and the
same ``seed`` gives the same matrix for the pool, the targets and every checkpoint.

Blocks are generated on the projection's device (CUDA's generator when on a GPU), so
features made on a GPU and on a CPU use different matrices: the feature store records the
device type and refuses to mix them.
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
