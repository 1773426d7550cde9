"""Frame preprocessing split in two: geometry on uint8 in data workers, normalisation on the model.

Resizing and cropping run where frames are decoded, so only model-sized uint8 crosses process
boundaries; the float conversion and mean/std run on the model's device.
"""

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F


def resize_and_center_crop(
    frames: torch.Tensor,
    short_side_size: int,
    crop_size: int,
    interpolation: InterpolationMode,
    antialias: bool,
) -> torch.Tensor:
    """`(T, H, W, C) uint8` -> `(T, C, crop_size, crop_size) uint8`.

    Scales the short side to `short_side_size` (the long side to `int(long * short_side_size /
    short)`, as torchvision and PyTorchVideo do), then takes the central square.
    """
    images = frames.permute(0, 3, 1, 2)
    images = F.resize(images, [short_side_size], interpolation=interpolation, antialias=antialias)
    return F.center_crop(images, [crop_size, crop_size]).contiguous()


def normalize(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channel_dim: int = 1
) -> torch.Tensor:
    """uint8 pixels with channels at `channel_dim` -> float32 `(pixels / 255 - mean) / std`."""
    shape = [1] * pixels.dim()
    shape[channel_dim] = len(mean)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(shape)
    return (pixels.float() / 255.0 - mean_t) / std_t
