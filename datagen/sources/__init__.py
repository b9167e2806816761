"""Image/mask sources: phantom (procedural), samed2d (SA-Med2D on disk), atlas (mricron-data)."""
