"""bird_jax.train."""
