"""Gate-and-Route's policies by name for the engines (entry point ``gpusched.policies``), kind ``"dispatcher"``.

Each name of :data:`~.policies.POLICIES` builds a :class:`~.dispatcher.GateRouteDispatcher` for one run of
:func:`simulators.serving.dispatch.simulate_dispatch` (``context.num_instances`` GPUs). Knobs: ``model`` (a
:class:`~.model.FluidModel`; default: :func:`~.dispatcher.fluid_model_from_trace` of the run's trace and step
model, with ``max_decodes``, ``chunk_tokens``, ``abandon_rate_per_s``, ``num_classes``, ``price_prefill``,
``price_decode``), ``classify``, ``solution`` (default: the bundled LP (40), the separate LP (42) for
``prioritize-and-route``, with ``sli`` rows if given), ``seed`` (default: the run's), ``admit_unplanned``.
"""
from gpusched import registry
from gpusched.errors import ConfigError

from .dispatcher import GateRouteDispatcher, PromptClassifier, fluid_model_from_trace
from .fluid import solve_fluid
from .policies import POLICIES, make_policy

SOURCE = "Lin, Han, Ding, Zhang, arXiv 2602.02987 (shared/papers/gate_and_route.md)"
SUMMARIES = {
    "gate-and-route": "Gate-and-Route (GG-SP): static mixed/solo plan, occupancy gate, greedy decode router",
    "prioritize-and-route": "Prioritize-and-Route: plan of the separate LP (42), largest D/P first, greedy router",
    "sli-gate-and-route": "SLI-aware Gate-and-Route: occupancy gate, randomised router with split buffers",
    "fg-sp": "FG-SP baseline (static planning alone): plan and greedy router, FCFS admission",
    "gi-wsp": "GI-WSP baseline (gating alone): shared GPUs, occupancy gate, decode stays on its GPU",
    "gf-wsp": "GF-WSP baseline: shared GPUs, occupancy gate, decoupled decodes, prefill before buffered decode",
    "fi-wsp": "FI-WSP baseline (Sarathi-like): shared GPUs, FCFS, decode stays on its prefill's GPU",
}


def _factory(name: str):
    def build(context, model=None, classify=None, solution=None, sli=None, seed=None, max_decodes=16,
              chunk_tokens=256, abandon_rate_per_s=0.1, num_classes=2, price_prefill=0.1, price_decode=0.2,
              **policy_knobs):
        n = context.num_instances
        if model is None:
            if context.trace is None or context.step_model is None:
                raise ConfigError(f"dispatcher {name!r} calibrates from the run's trace and step model; build it "
                                  f"through simulate_dispatch, or pass model=FluidModel(...)")
            model, auto = fluid_model_from_trace(context.trace, context.step_model, n, max_decodes, chunk_tokens,
                                                 abandon_rate_per_s, num_classes, price_prefill, price_decode)
            classify = classify or auto
        if solution is None:
            solution = solve_fluid(model, "separate" if name == "prioritize-and-route" else "bundled", sli=sli)
        policy = make_policy(name, solution, n, seed=context.seed if seed is None else seed, **policy_knobs)
        return GateRouteDispatcher(policy, model, classify or PromptClassifier.nearest(model), solution)
    return build


for _name in POLICIES:
    registry.register("dispatcher", _name, _factory(_name), SUMMARIES[_name], SOURCE)
