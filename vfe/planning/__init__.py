"""Planning a run: which videos a job does, and what runs sharing a folder agree on."""
