"""bird_jax.data."""
