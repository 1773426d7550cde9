"""What a run produces: feature files, provenance, failure records, totals, progress."""
