"""The XLA options every jitted program of the package compiles with, and `jit` with them.

XLA:CPU (jaxlib 0.10) hands each convolution to YNNPACK by default, which runs it on one
thread; left to XLA's own (Eigen) convolution it uses every core. On this project's 2-core
CPU: the extractor's second-layer convolution on 180 frames 57 -> 30 ms, a one-video
transductive test 350-374 -> 303-314 ms, the reference config's outer step 1.90 -> 1.53 s
(XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution, which these options
equal: the same fusions). YNNPACK keeps the dots and reductions, its default's other kinds.
The options are fields of XLA:CPU; other backends ignore them.

Jit the package's functions yourself with `jit` (or `compiler_options=OPTIONS`) to get them.
"""

import jax

YNN_FUSIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": YNN_FUSIONS}


def jit(fun, **kwargs):
  """`jax.jit(fun, **kwargs)` compiled with OPTIONS."""
  return jax.jit(fun, compiler_options=OPTIONS, **kwargs)
