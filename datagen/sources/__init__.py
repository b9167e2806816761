"""Image/mask sources: phantom (procedural), samed2d (SA-Med2D-16M on disk), atlas (mricron-data)."""
