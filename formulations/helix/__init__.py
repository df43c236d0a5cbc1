"""Helix (Mei et al., ASPLOS'25): max-flow placement of LLM layers on heterogeneous GPUs and networks."""
from .problem import (DATA_DIR, HELIX_MODELS, HelixModel, HelixProblem, load_helix_placement,
                      load_helix_problem, load_throughput_table, read_cluster_ini)
from .flow import FlowResult, chaining_arcs, max_flow
from .result import PlacementResult
from .milp import PlacementModel, build_placement_model, interchangeable_classes, prune_links, solve_placement
from .chain import chain_placement, fast_link_regions
from .regional import regional_chain_placement
from .heuristics import HEURISTICS, heuristic_placement, heuristic_result, petals_placement, swarm_placement
from .arcflow import links_never_bind, solve_placement_arcflow
from .coverbound import CoverBound, cover_bound_at_level, cover_weight, layer_cover_bound
from .optimality import OptimalityProof, hub_feasibility_model, prove_optimal
from .bruteforce import brute_force_optimum, count_placements
from .iwrr import InterleavedWeightedRoundRobin, KVExpectation, PipelineScheduler
from .routing import (ROUTERS, HelixRouter, RandomRouter, ShortestQueueRouter, SwarmRouter, routing_graph,
                      stages_from_path)
