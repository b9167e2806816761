"""bird_jax.metrics."""
