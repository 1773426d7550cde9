"""Short model names for `--model NAME`: one entry per backbone, mapped to its class path."""

from vfe.errors import VfeError

MODELS: dict[str, str] = {
    "clip": "vfe.backbones.openai_clip.CLIPBackbone",
    "slowfast": "vfe.backbones.slowfast.SlowFastBackbone",
    "open_clip": "vfe.backbones.openclip.OpenCLIPBackbone",
    "timm": "vfe.backbones.timm_image.TimmBackbone",
    "pytorchvideo": "vfe.backbones.pytorchvideo_zoo.PyTorchVideoBackbone",
    "videomae": "vfe.backbones.videomae.VideoMAEBackbone",
    "pann": "vfe.backbones.pann.PANNBackbone",
    "clap": "vfe.backbones.clap.CLAPBackbone",
}


def resolve_model(name_or_class_path: str) -> str:
    """The class path for a short name; a dotted class path passes through unchanged."""
    if name_or_class_path in MODELS:
        return MODELS[name_or_class_path]
    by_class_name = {path.rsplit(".", 1)[1]: path for path in MODELS.values()}
    if name_or_class_path in by_class_name:  # `--model CLIPBackbone`
        return by_class_name[name_or_class_path]
    if "." in name_or_class_path:
        return name_or_class_path
    raise VfeError(
        f"unknown model {name_or_class_path!r}; choose one of {', '.join(MODELS)} "
        "or give a class path such as vfe.backbones.openai_clip.CLIPBackbone"
    )
