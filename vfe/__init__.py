"""vfe: per-clip video features (CLIP, SlowFast) written as one .npz per video."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:  # `vfe.extract` without importing torch on `import vfe`
    if name == "extract":
        from vfe.api import extract

        return extract
    raise AttributeError(f"module 'vfe' has no attribute {name!r}")
