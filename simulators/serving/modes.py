"""The batch scheduler of one GPU in a mode set by a cluster dispatcher (``mixed``, ``solo``, ``shared``).

A :class:`~gpusched.policy.ClusterDispatcher` decides what each GPU holds; :class:`GpuModeScheduler` only runs
it: every step decodes every decoding sequence one token and advances the (single) prefill by one chunk of at
most ``chunk_tokens`` tokens. It checks, at every step, what the GPU's mode allows (the paper's GPU of
Lin et al., arXiv 2602.02987, Sec. 2; :data:`gpusched.policy.GPU_MODES`):

* ``mixed``: at most one prefill, at most ``B - 1`` decodes;
* ``solo``: no prefill, at most ``B`` decodes;
* ``shared``: at most one prefill, prefill + decodes at most ``B``.

A violation is a dispatcher or engine bug and raises :class:`ModeViolationError`. KV: a sequence that starts
its prefill here reserves its whole prompt (as Sarathi-Serve does at admission); a sequence handed over after
its prefill elsewhere takes the KV of its computed tokens; a decode grows one token per step. KV that is not
free is an error too (the dispatch engine refuses configurations where ``B`` requests may not fit).
"""
from __future__ import annotations

from collections import deque

from gpusched.errors import ConfigError, GpuschedError
from gpusched.kvcache import BlockManager
from gpusched.policy import GPU_MIXED, GPU_MODES, GPU_SOLO, StepPlan

__all__ = ["GpuModeScheduler", "ModeViolationError"]


class ModeViolationError(GpuschedError, AssertionError):
    """A GPU was given what its mode forbids (two prefills, a prefill on a solo GPU, too many decodes), or KV
    ran out where the dispatch engine promised it would not."""


class GpuModeScheduler:
    """Runs what the dispatcher placed on one GPU, one prefill chunk and one token per decode each step.

    Args:
        mode: ``"mixed"``, ``"solo"`` or ``"shared"``.
        max_decodes: ``B``, slots of the GPU (an integer >= 1; a mixed GPU decodes at most ``B - 1``).
        chunk_tokens: ``C``, prefill tokens per step (an integer >= 1).
        gpu: the GPU's index, for error messages.
    """

    def __init__(self, mode: str, max_decodes: int, chunk_tokens: int, gpu: int = 0):
        if mode not in GPU_MODES:
            raise ConfigError(f"GPU {gpu}: mode {mode!r} is not one of {GPU_MODES}")
        for knob, v in (("max_decodes", max_decodes), ("chunk_tokens", chunk_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"GPU {gpu}: {knob} = {v!r} must be an integer >= 1")
        if mode == GPU_MIXED and max_decodes < 2:
            raise ConfigError(f"GPU {gpu}: a mixed GPU needs max_decodes >= 2 (one slot is the prefill's), got "
                              f"{max_decodes}")
        self.mode, self.max_decodes, self.chunk_tokens, self.gpu = mode, max_decodes, chunk_tokens, gpu
        self.name = f"gpu-mode-{mode}"
        self.decode_cap = max_decodes - 1 if mode == GPU_MIXED else max_decodes
        self.max_prefills = 0 if mode == GPU_SOLO else 1

    def schedule(self, waiting: deque, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        while waiting:  # the dispatcher only places what the mode holds: admit all of it
            seq = waiting.popleft()
            tokens = seq.prompt_tokens if seq.num_computed_tokens == 0 else seq.num_computed_tokens
            if kv.allocate_if_free(seq.index, tokens) is None:
                self._raise(f"no free KV for {tokens} tokens of {seq} ({kv.num_free_blocks} blocks free)")
            running.append(seq)
        plan = StepPlan()
        prefills = decodes = 0
        for seq in running:
            todo = seq.num_tokens - seq.num_computed_tokens
            if seq.generated_tokens == 0:  # prefill: its prompt's KV is reserved
                prefills += 1
                plan.entries.append((seq, min(todo, self.chunk_tokens)))
            else:
                decodes += 1
                if not kv.grow_to(seq.index, seq.num_computed_tokens + 1):
                    self._raise(f"no free KV block to decode {seq}")
                plan.entries.append((seq, 1))
        if prefills > self.max_prefills or decodes > self.decode_cap or prefills + decodes > self.max_decodes:
            self._raise(f"holds {prefills} prefill(s) and {decodes} decode(s); a {self.mode} GPU with B = "
                        f"{self.max_decodes} holds at most {self.max_prefills} prefill(s) and {self.decode_cap} "
                        f"decodes, {self.max_decodes} in all")
        return plan

    def _raise(self, what: str):
        raise ModeViolationError(f"GPU {self.gpu} ({self.mode}): {what}")
