"""MC-SF (Jaillet et al., "Online Scheduling for LLM Inference with KV Cache Constraints", arXiv 2502.07115).

The discrete-time model and schedule checker (:mod:`.model`), the hindsight-optimal IP (1)-(4)
(:mod:`.hindsight`, with a CP-SAT model of the same problem in :mod:`.cpsat`), combinatorial lower bounds and the
separation inequalities both solvers use (:mod:`.bounds`), the IP as an MPS/LP file for other solvers and their
solutions read back (:mod:`.export`), MC-SF and the paper's baselines (:mod:`.online`, on the
shared batch loop of :mod:`.engine`), and the real-data simulation with the paper's Llama-2-70B iteration-time formula
(:mod:`.realdata`). Conventions: ``shared/papers/mcsf.md``.
"""
from .model import Instance, InfeasibleScheduleError, Schedule, check_schedule, memory_profile, schedule_violations
from .engine import POLICIES, BatchRun, admit_prefix, run_batches
from .online import alpha_beta, alpha_greedy, mc_benchmark, mcsf
from .hindsight import HindsightArrays, HindsightResult, build_hindsight_arrays, hindsight_optimal
from .export import read_solution_file, schedule_from_solution, write_hindsight_model, write_solution_file
from .bounds import area_lower_bound, latency_lower_bound, separation_families, separation_lower_bound
from .realdata import PAPER_MEMORY_TOKENS, RealRun, llama2_70b_2xa100_batch_time_s, simulate_real
from .policy import KvShortageError, McsfScheduler
