"""Domain records, the per-domain supervisor, and the lifecycle verbs."""
