"""HERO_Video_Feature_Extractor's recipes as data (`--model.recipe hero`): how the released
QVHighlights features (Moment-DETR, QD-DETR, UniVTG, Lighthouse) were made. Read from HERO's
`slowfast/extract_feature/` and `clip/` code; `vfe.data.recipe_samples` runs them.
"""

from fractions import Fraction
from typing import Literal

from torchvision.transforms import InterpolationMode

from vfe.data.input_spec import FfmpegRecipe, InputSpec, RecipeRows
from vfe.errors import VfeError

Recipe = Literal["vfe", "hero"]  # vfe: the contract's recipe (the default)

# SlowFast: `fps=30`, short side 224, crop 224; 32 samples per clip spread over
# NUM_FRAMES x SAMPLING_RATE = 64 frames at the source's rate; ceil(duration / clip_len) rows.
HERO_SLOWFAST = FfmpegRecipe(
    name="hero",
    short_side=224,
    crop_size=224,
    rows=RecipeRows.DURATION,
    frame_rate_hz=Fraction(30),
    clip_span_frames=64,
)


def check_frames_per_clip(recipe: Recipe, frames_per_clip: object) -> None:
    """A recipe picks its own frames: a frames_per_clip beside it is refused."""
    if recipe != "vfe" and frames_per_clip is not None:
        raise VfeError(
            f"--model.recipe {recipe} picks its own frames; drop --model.frames_per_clip "
            f"{frames_per_clip}"
        )


def hero_slowfast_spec(
    mean: tuple[float, float, float], std: tuple[float, float, float]
) -> InputSpec:
    """SlowFast's input under HERO's recipe (HERO divides by `std + 1e-8`: a relative change of
    4e-8, below float32's resolution for these values)."""
    return InputSpec(
        frames_per_clip=32,
        resize_size=224,
        crop_size=224,
        interpolation=InterpolationMode.BICUBIC,
        antialias=False,
        mean=mean,
        std=std,
        default_batch_size=8,
        stack_frames=True,
        ffmpeg_recipe=HERO_SLOWFAST,
    )


def hero_clip_spec(
    resolution: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> InputSpec:
    """CLIP's input under HERO's recipe: one frame per row from `fps=1/clip_len`, short side and
    crop at the model's resolution (HERO's: 224 for ViT-B/32, 288 for RN50x4)."""
    return InputSpec(
        frames_per_clip=1,
        resize_size=resolution,
        crop_size=resolution,
        interpolation=InterpolationMode.BICUBIC,
        antialias=False,
        mean=mean,
        std=std,
        default_batch_size=32,
        ffmpeg_recipe=FfmpegRecipe(
            name="hero", short_side=resolution, crop_size=resolution, rows=RecipeRows.FRAMES
        ),
    )
