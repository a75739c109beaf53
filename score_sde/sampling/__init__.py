"""Samplers: one registry (`get_sampler`, `register_sampler`) of PC, the probability-flow ODE, DDIM,
DPM-Solver++ and EDM's Heun sampler, each `sampler(rng, score_fn, z=None) -> (x, nfe)` compiled as one
XLA program, with `nfe` the score evaluations it made.
"""
from score_sde.sampling.common import shard_batch, standard_randn_like
from score_sde.sampling.registry import (SAMPLERS, config_options, get_sampler, get_sampling_fn, register_sampler,
                                         sampler_names)
from score_sde.sampling.pc import (CORRECTORS, PREDICTORS, ancestral_sampling, annealed_langevin_dynamics,
                                   check_predictor, corrector_names, euler_maruyama, get_pc_sampler, langevin,
                                   no_corrector, no_predictor, pc_loop, pc_updates, predictor_names,
                                   register_corrector, register_predictor, reverse_diffusion)
from score_sde.sampling.ode import get_ode_sampler, solve_ode
from score_sde.sampling.ddim import get_ddim_sampler
from score_sde.sampling.dpm_solver import get_dpm_solver_sampler
from score_sde.sampling.edm import get_edm_sampler
