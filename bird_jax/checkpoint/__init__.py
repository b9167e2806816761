"""bird_jax.checkpoint."""
