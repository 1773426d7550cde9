"""Frame preprocessing split in two: geometry on uint8 where frames are decoded (or, with
`--data.convert_on model`, colour conversion and geometry on the model's device), normalisation
on the model.

By default resizing and cropping run in the data workers, so only model-sized uint8 crosses
process boundaries; the float conversion and mean/std run on the model's device.
"""

import torch
from torchvision.transforms.v2 import functional as F

from vfe.data.input_spec import InputSpec
from vfe.decoding.colour import FrameLayout, yuv_to_rgb

# Packed pictures converted at once on the model's device: bounds the float32 intermediates
# (a 720p picture is 11 MB as float RGB; SlowFast's batch of 8 clips holds 256 pictures).
CONVERT_PICTURES = 32


def resize_and_center_crop(frames: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """`(T, H, W, C) uint8` -> `(T, C, h, w) uint8`, `(h, w) = spec.sample_size`: resized as
    `spec.resized_size` says, then the central `spec.crop_size` (if any)."""
    return resize_and_center_crop_images(frames.permute(0, 3, 1, 2), spec)


def resize_and_center_crop_images(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """`(T, C, H, W) uint8` -> `(T, C, h, w) uint8`, as `resize_and_center_crop`."""
    size = spec.resized_size(images.shape[-2], images.shape[-1])
    images = F.resize(
        images, list(size), interpolation=spec.interpolation, antialias=spec.antialias
    )
    if spec.crop_size is not None:
        images = F.center_crop(images, list(spec.sample_size))
    return images.contiguous()


def packed_to_samples(pixels: torch.Tensor, layout: FrameLayout, spec: InputSpec) -> torch.Tensor:
    """Packed pictures of one layout (`vfe.decoding.colour`), `(N, 1, rows, cols)` or stacked
    `(N, 1, T, rows, cols)` uint8 -> the backbone's uint8 samples `(N, C, h, w)` or
    `(N, C, T, h, w)`, on the pictures' device: converted to RGB, then resized and cropped as in
    the workers."""
    stacked = pixels.dim() == 5
    pictures = pixels.transpose(1, 2).flatten(0, 1) if stacked else pixels
    images = torch.cat(
        [
            resize_and_center_crop_images(yuv_to_rgb(chunk, layout), spec)
            for chunk in pictures.split(CONVERT_PICTURES)
        ]
    )
    if stacked:  # (N*T, C, h, w) -> (N, C, T, h, w)
        images = images.unflatten(0, (len(pixels), -1)).transpose(1, 2)
    return images.contiguous()


def model_samples(
    pixels: torch.Tensor | list[torch.Tensor],
    layouts: list[FrameLayout | None] | None,
    spec: InputSpec,
) -> torch.Tensor:
    """A batch's samples of one backbone (`vfe.data.records.ModelSamples`) as uint8 at the
    backbone's size: runs of packed pictures are converted here, on their device."""
    if layouts is None:
        return pixels
    device_type = pixels[0].device.type
    # Pixel arithmetic in float32 whatever the run's precision (bf16 holds 0-255 only to 1-2
    # levels): autocast must not take the resize.
    with torch.autocast(device_type, enabled=False):
        return torch.cat(
            [
                run if layout is None else packed_to_samples(run, layout, spec)
                for run, layout in zip(pixels, layouts, strict=True)
            ]
        )


def normalize(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channel_dim: int = 1
) -> torch.Tensor:
    """uint8 pixels with channels at `channel_dim` -> float32 `(pixels / 255 - mean) / std`."""
    shape = [1] * pixels.dim()
    shape[channel_dim] = len(mean)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(shape)
    return (pixels.float() / 255.0 - mean_t) / std_t
