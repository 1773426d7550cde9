"""Frame preprocessing split in two: geometry on uint8 in data workers, normalisation on the model.

Resizing and cropping run where frames are decoded, so only model-sized uint8 crosses process
boundaries; the float conversion and mean/std run on the model's device.
"""

import torch
from torchvision.transforms.v2 import functional as F

from vfe.data.input_spec import InputSpec


def resize_and_center_crop(frames: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """`(T, H, W, C) uint8` -> `(T, C, h, w) uint8`, `(h, w) = spec.sample_size`: resized as
    `spec.resized_size` says, then the central `spec.crop_size` (if any)."""
    images = frames.permute(0, 3, 1, 2)
    size = spec.resized_size(images.shape[-2], images.shape[-1])
    images = F.resize(
        images, list(size), interpolation=spec.interpolation, antialias=spec.antialias
    )
    if spec.crop_size is not None:
        images = F.center_crop(images, list(spec.sample_size))
    return images.contiguous()


def normalize(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channel_dim: int = 1
) -> torch.Tensor:
    """uint8 pixels with channels at `channel_dim` -> float32 `(pixels / 255 - mean) / std`."""
    shape = [1] * pixels.dim()
    shape[channel_dim] = len(mean)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(shape)
    return (pixels.float() / 255.0 - mean_t) / std_t
