"""Deep residual networks (He et al., 2015) in JAX/Flax."""
