"""`vfe search`: rank a features folder's clips by a text query (`index`, `report`, `command`)."""
