"""Decoded 8-bit 4:2:0 pictures as one packed uint8 tensor, and their conversion to RGB on any
torch device (`--data.convert_on model`: the workers only decode; the model's GPU converts and
resizes).

The conversion is FFmpeg swscale's for `to_ndarray("rgb24")`: the frame's own matrix (BT.709
where the frame says so, BT.601 otherwise, as swscale treats unspecified ones), its range
(limited, or full for JPEG-range frames), each chroma sample covering its 2x2 pixels. swscale
computes in fixed point and truncates, as this does in float32: pixels differ from its by at most
2 levels (mean |difference| ≤ 0.4 on 720p BT.601, BT.709 and full-range files;
`tests/test_convert_on_model.py`).
"""

from typing import NamedTuple

import numpy as np
import torch

# (Kr, Kb) of the luma equation Y = Kr R + (1 - Kr - Kb) G + Kb B.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
# FFmpeg's AVColorSpace values -> matrix (2, unspecified, is BT.601 to swscale); frames tagged
# otherwise (BT.2020, SMPTE 240M, FCC, RGB) are converted by swscale in the worker instead.
_MATRIX_OF_COLORSPACE = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
PLANAR, INTERLEAVED = "planar", "interleaved"  # yuv420p (U, V planes), nv12 (UVUV... plane)


class FrameLayout(NamedTuple):
    """How a packed picture is laid out and coloured (a NamedTuple: it travels through
    DataLoader pinning and Lightning's device transfer as is)."""

    height: int  # the picture as decoded, before rotation
    width: int
    chroma: str  # PLANAR: U then V side by side under the luma; INTERLEAVED: NV12's UV rows
    matrix: str  # a key of MATRICES
    full_range: bool
    rotation: int  # degrees, as `np.rot90(picture, k=rotation // 90)` displays it


def packed_shape(height: int, width: int) -> tuple[int, int]:
    """`(rows, cols)` of a packed `height x width` picture: luma rows, then the chroma rows."""
    chroma_height, chroma_width = (height + 1) // 2, (width + 1) // 2
    return height + chroma_height, 2 * chroma_width


def layout_of(
    height: int, width: int, pixel_format: str, colorspace: int, color_range: int, rotation: int
) -> FrameLayout | None:
    """The layout of a decoded picture, or None where the model-side conversion does not
    apply (not 8-bit 4:2:0, a matrix other than BT.601/709, or an odd height: swscale then
    interpolates the chroma instead of repeating it)."""
    matrix = _MATRIX_OF_COLORSPACE.get(colorspace)
    if matrix is None or pixel_format not in ("yuv420p", "yuvj420p", "nv12") or height % 2:
        return None
    full_range = color_range == _FULL_RANGE or pixel_format == "yuvj420p"
    chroma = INTERLEAVED if pixel_format == "nv12" else PLANAR
    return FrameLayout(height, width, chroma, matrix, full_range, rotation % 360)


def pack_planes(planes: list[np.ndarray], layout: FrameLayout, packed: torch.Tensor) -> None:
    """Write the picture's planes, `(rows, line size)` uint8 arrays (luma, then U and V, or
    NV12's interleaved UV; rows may be padded on the right), into `packed`, a CPU
    `(rows, cols) uint8` tensor (`packed_shape`)."""
    rows, cols = packed_shape(layout.height, layout.width)
    target = packed.numpy()
    height, width = layout.height, layout.width
    target[:height, :width] = planes[0][:height, :width]
    if width < cols:  # an odd width: the luma's spare column
        target[:height, width:] = 0
    if layout.chroma == INTERLEAVED:
        target[height:] = planes[1][: rows - height, :cols]
    else:
        half = cols // 2
        target[height:, :half] = planes[1][: rows - height, :half]
        target[height:, half:] = planes[2][: rows - height, :half]


def yuv_to_rgb(packed: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """`(N, 1, rows, cols) uint8` packed pictures of one layout -> `(N, 3, H, W) uint8` RGB in
    display orientation, on the tensor's device."""
    height, width = layout.height, layout.width
    count, _, rows, cols = packed.shape
    chroma_height, chroma_width = rows - height, cols // 2
    luma = packed[:, 0, :height].float()  # (N, H, 2 * chroma_width): an odd width's spare column
    chroma = packed[:, 0, height:].float()
    if layout.chroma == INTERLEAVED:
        u, v = chroma[..., 0::2], chroma[..., 1::2]
    else:
        u, v = chroma[..., :chroma_width], chroma[..., chroma_width:]
    kr, kb = MATRICES[layout.matrix]
    kg = 1.0 - kr - kb
    chroma_scale = 1.0 if layout.full_range else 255.0 / 224.0
    cb, cr = (u - 128.0) * chroma_scale, (v - 128.0) * chroma_scale
    if not layout.full_range:
        luma = (luma - 16.0) * (255.0 / 219.0)
    # Each chroma sample covers 2x2 luma samples: the chroma terms are computed at their own
    # resolution and broadcast over the luma viewed as (N, H/2, 2, W/2, 2).
    terms = (
        (2.0 * (1.0 - kr)) * cr,
        (-2.0 * kr * (1.0 - kr) / kg) * cr + (-2.0 * kb * (1.0 - kb) / kg) * cb,
        (2.0 * (1.0 - kb)) * cb,
    )
    blocks = luma.view(count, chroma_height, 2, chroma_width, 2)
    rgb = torch.empty((count, 3, chroma_height, 2, chroma_width, 2), device=packed.device)
    for channel, term in enumerate(terms):
        torch.add(blocks, term[:, :, None, :, None], out=rgb[:, channel])
    rgb = rgb.view(count, 3, 2 * chroma_height, 2 * chroma_width)[:, :, :height, :width]
    rgb = rgb.clamp_(0, 255).to(torch.uint8)  # truncates, as swscale
    if layout.rotation:
        rgb = torch.rot90(rgb, k=layout.rotation // 90, dims=(2, 3))
    return rgb
