"""Med-GRIT-style data generation from image/mask sources."""
