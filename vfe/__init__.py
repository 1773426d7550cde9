"""vfe: per-clip video features (CLIP, SlowFast) written as one .npz per video."""

__version__ = "0.1.0"
