"""Block hashes for prefix caching, at the engine's block size.

Two sources of shared prefixes exist in the traces:

- a trace's own prefix hashes (Mooncake: one id per 512-token block; equal ids mean the same prefix,
  i.e. the ids are chained): engine block ``b`` lies in trace block ``b * block / trace_block`` and is
  named by that id and ``b``, which again identifies the whole prefix;
- multi-round sessions: round r's prompt is the session's history, so engine block ``b`` of any round of
  a session holds the same tokens and is named by the session and ``b``.

The hashes are produced lazily (a long prompt has hundreds of engine blocks) by small sequence objects
that the block manager iterates and slices like tuples; a session's slices are ``range`` objects, which
the block manager takes as exclusive hashes (see :class:`gpusched.kvcache.BlockManager`).
"""
from __future__ import annotations

from gpusched.errors import ConfigError

_SESSION_TAG = -(1 << 62)  # session hashes are negative and far from any id a trace carries


class TraceBlockHashes:
    """Engine-block hashes expanded from coarser trace-block ids (``ratio`` engine blocks per id)."""

    __slots__ = ("ids", "ratio", "length")
    reused = True  # other requests may name these blocks (BlockManager.free)

    def __init__(self, ids, trace_block_tokens: int, block_size_tokens: int, num_tokens: int):
        if trace_block_tokens % block_size_tokens:
            raise ConfigError(
                f"trace prefix blocks of {trace_block_tokens} tokens are not a multiple of the engine's "
                f"{block_size_tokens}-token KV blocks; choose a block size that divides {trace_block_tokens}")
        self.ids = tuple(int(h) for h in ids)
        self.ratio = trace_block_tokens // block_size_tokens
        self.length = min(num_tokens // block_size_tokens, len(self.ids) * self.ratio)

    def __len__(self) -> int:
        return self.length

    def _at(self, b: int) -> int:
        return self.ids[b // self.ratio] * 4096 + b % self.ratio

    def __iter__(self):  # lazily: a prefix probe stops at the first block not cached
        r, left = self.ratio, self.length
        for h in self.ids:
            base = h * 4096
            if left <= r:
                yield from range(base, base + left)
                return
            yield from range(base, base + r)
            left -= r

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.length)
            if step != 1:
                return tuple(self._at(b) for b in range(start, stop, step))
            r = self.ratio  # whole runs of sub-blocks per trace id, built in one comprehension
            subs = [h * 4096 + k for h in self.ids[start // r: -(-stop // r)] for k in range(r)]
            return tuple(subs[start % r: start % r + max(stop - start, 0)])
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self._at(index % self.length)

    def __bool__(self) -> bool:
        return self.length > 0


class SessionBlockHashes(TraceBlockHashes):
    """Engine-block hashes of a session's token stream (shared by all its rounds), or of one request's own
    blocks. ``reused``: a later round will name these blocks (False for a session's last round and for a
    request's own blocks: once it has finished, nobody asks for them)."""

    __slots__ = ("session", "reused")

    def __init__(self, session: int, num_tokens: int, block_size_tokens: int, reused: bool = False):
        self.session = session
        self.length = num_tokens // block_size_tokens
        self.reused = reused

    def _at(self, b: int) -> int:
        return _SESSION_TAG - (self.session << 32) - b

    def __iter__(self):  # lazily: a prefix probe usually stops at the first block
        top = _SESSION_TAG - (self.session << 32)
        return iter(range(top, top - self.length, -1))

    def __getitem__(self, index):
        if isinstance(index, slice):  # consecutive blocks have consecutive (decreasing) hashes
            start, stop, step = index.indices(self.length)
            top = _SESSION_TAG - (self.session << 32)
            # a range: the block manager's exclusive hashes (a session's rounds never run at the same time,
            # and a request's own blocks are its own)
            return range(top - start, top - stop, -step) if stop > start else ()
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self._at(index % self.length)
