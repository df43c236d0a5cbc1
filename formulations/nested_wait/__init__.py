"""Nested WAIT (Ao, Luo, Simchi-Levi, Wang, "Optimizing LLM Inference: Fluid-Guided Online Scheduling with Memory
Constraints", arXiv 2504.11320). Spec: ``shared/papers/nested_wait.md``.

* :mod:`.fluid` — prompt types, the fluid equilibrium (eqs. 7-10), the stability region, our overload LP (HiGHS).
* :mod:`.thresholds` — WAIT's conditions (eq. 11) and the least admissible integer thresholds.
* :mod:`.segments` — Nested WAIT's segments, conditions (eqs. 12-13), theta and the safety buffer (eq. 14), the
  segment design for many output lengths and the experiments' in-flight cap rules.
* :mod:`.discrete` — the paper's own discrete model as an exact toy engine (FCFS, WAIT, Nested WAIT).
* :mod:`.policy` — :class:`WaitScheduler` (Algorithm 1) and :class:`NestedWaitScheduler` (Algorithm 2) for the
  serving engines; :mod:`.calibrate` fits them to a trace and an instance; :mod:`.plugin` registers ``wait`` and
  ``nested-wait``.
"""
from .fluid import (FluidEquilibrium, FluidInstabilityError, OverloadBenchmark, PromptType, fluid_equilibrium,
                    in_stability_region, max_stable_scale, overload_benchmark, stability_load_limit, stage_count,
                    workload_load)
from .thresholds import NoAdmissibleThresholdsError, WaitThresholdCheck, check_wait_thresholds, choose_wait_thresholds
from .segments import (NestedThresholdCheck, SegmentDesign, boundary_theta, check_nested_thresholds,
                       choose_nested_thresholds, continuation_ratios, equal_width_ends, hoeffding_theta, nested_memory,
                       safety_buffer_prompts, split_in_flight_cap)
from .discrete import ToyFcfs, ToyInstance, ToyNestedWait, ToyRun, ToyWait, poisson_type_arrivals, simulate_toy
from .policy import MODES, NestedWaitScheduler, WaitScheduler
from .calibrate import (IterationTimeFit, calibrated_nested_wait, calibrated_wait, fit_iteration_time, in_flight_cap,
                        segment_ends_for, types_from_lengths)
