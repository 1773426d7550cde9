"""The data path: clip grid, work plan, the dataset and datamodule, preprocessing."""
