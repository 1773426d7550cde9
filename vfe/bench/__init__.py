"""`vfe bench`: the benchmark command, its measurements and synthetic videos."""
