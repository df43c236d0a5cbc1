"""Random draws a block at a time: one numpy call per draw costs more than the event it serves."""
from __future__ import annotations


class BlockDraws:
    """Successive values of ``sample(block)`` (a seeded generator's method, e.g. ``rng.random``)."""

    def __init__(self, sample, block: int = 4096):
        self._sample, self._block = sample, block
        self._buf: list[float] = []
        self._k = 0

    def __call__(self) -> float:
        if self._k == len(self._buf):
            self._buf = self._sample(self._block).tolist()
            self._k = 0
        value = self._buf[self._k]
        self._k += 1
        return value
