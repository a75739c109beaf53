"""score_sde: score-based generative modeling with SDEs, in JAX."""
__version__ = '0.1.0'
