"""Where a run's videos come from besides files on disk: tar shards (`shards`)."""
