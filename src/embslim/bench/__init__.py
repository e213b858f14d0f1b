"""The quality-versus-memory benchmark: every method at every budget and seed, one table and one Pareto chart."""
