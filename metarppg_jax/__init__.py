"""metarppg_jax: Meta-rPPG (Lee, Chen, Lee, ECCV 2020) in JAX.

Heart rate from a face video by a network that adapts itself to each new video at test time
(transductive meta-learning). See README.md for the architecture.
"""

__version__ = "0.1.0"
