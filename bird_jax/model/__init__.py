"""bird_jax.model."""
