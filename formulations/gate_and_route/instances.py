"""The paper's main instance (Sec. 6.2, spec §4 and B3): two classes on the Qwen-8B / A100 calibration."""
from __future__ import annotations

from .calibration import PAPER_QWEN3_8B_A100
from .model import FluidModel, RequestClass

__all__ = ["paper_classes", "paper_instance"]


def paper_classes(arrival_rate: float = 0.5, abandon_rate: float = 0.1) -> tuple[RequestClass, RequestClass]:
    """Class 0 decode-heavy (P = 300, D = 1000, code generation), class 1 prefill-heavy (P = 3000, D = 400,
    summarisation); ``lambda`` per GPU per second and ``theta`` per second for both (spec §4 [P])."""
    return (RequestClass(300, 1000, arrival_rate, abandon_rate), RequestClass(3000, 400, arrival_rate, abandon_rate))


def paper_instance(max_decodes: int = 16, chunk_tokens: int = 256, price_prefill: float = 0.1,
                   price_decode: float = 0.2) -> FluidModel:
    """The main instance: ``B = 16``, ``C = 256``, ``tau = 0.0174 + 6.2e-5 C = 0.033272 s``, ``gamma = 45.45``,
    ``lambda = (0.5, 0.5)``, ``theta = (0.1, 0.1)``, ``c_p = 0.1``, ``c_d = 0.2`` (spec §4, B3)."""
    fit = PAPER_QWEN3_8B_A100
    return FluidModel(paper_classes(), max_decodes, chunk_tokens, fit.tau_mix_s(chunk_tokens),
                      fit.gamma_tokens_per_s, price_prefill, price_decode)
