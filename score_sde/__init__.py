"""score_sde: score-based generative modeling with SDEs, in JAX.

Importing score_sde appends its default XLA flags to XLA_FLAGS, which XLA reads when JAX starts its
backend (the first computation), so import score_sde before running anything in JAX. The defaults:

  --xla_cpu_experimental_ynn_fusion_type=-individual_convolution
      CPU: convolutions run inside XLA's fusions instead of one library call each; the DDPM++
      training step takes about 20% less time (benchmarks/network_speed.py).

SCORE_SDE_XLA_FLAGS replaces these defaults (SCORE_SDE_XLA_FLAGS= for none), and a flag already
named in XLA_FLAGS is left as the user set it.
"""
import os
import sys
import warnings

__version__ = '0.1.0'

DEFAULT_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def _set_xla_flags():
  wanted = os.environ.get('SCORE_SDE_XLA_FLAGS', DEFAULT_XLA_FLAGS).split()
  current = os.environ.get('XLA_FLAGS', '')
  added = [f for f in wanted if f.split('=')[0] not in current]
  if not added:
    return
  if 'jax' in sys.modules:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    if xla_bridge.backends_are_initialized():
      warnings.warn(f'score_sde was imported after JAX started its backend, so its XLA flags {added} are not '
                    'in effect (the DDPM++ training step is about 25% slower without them). Import score_sde '
                    'before running JAX code, or set XLA_FLAGS yourself; SCORE_SDE_XLA_FLAGS= silences this.',
                    stacklevel=3)
      return
  os.environ['XLA_FLAGS'] = ' '.join([current] + added).strip()


_set_xla_flags()
