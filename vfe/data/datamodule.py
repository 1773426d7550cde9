"""The LightningDataModule: lists the videos to do (and what to skip), checks the data
options, and feeds `vfe.data.dataset.VideoClipDataset` batches through DataLoader workers."""

import ctypes
import gc
import importlib.util
import math
import os
import signal
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from vfe.data.clip_grid import GRID_VERSION, TAIL_RULES, clip_length_fraction, stride_phases
from vfe.data.dataset import VideoClipDataset
from vfe.data.input_spec import InputSpec, is_audio
from vfe.data.paths import (
    LAYOUTS,
    VideoEntry,
    check_output_dir,
    find_videos,
    flat_layout,
    model_output_dirs,
    read_video_list,
)
from vfe.data.recipe_samples import check_recipe_settings
from vfe.data.work_plan import PlannedRun, ShardItem, WorkItem, plan_ranks
from vfe.decoding.video import (
    DEFAULT_DECODER,
    check_decoder,
    decoder_version,
    file_errors,
    split_duration_seconds,
    supports_segments,
)
from vfe.destinations import is_url
from vfe.errors import VfeError
from vfe.messages import count, say
from vfe.planning.claims import Claims
from vfe.planning.job_part import JobPart, job_part, select_part
from vfe.planning.owners import new_run_id, register, this_run
from vfe.planning.provenance import run_provenance
from vfe.planning.resume import RunPlan, plan_run
from vfe.planning.shard_plan import ShardListing, plan_shards, shard_output_dirs, share_shards
from vfe.sources.shards import list_shards
from vfe.stopping import STOP_SIGNALS

OUTPUT_DTYPES = ("float32", "float16")  # what `features` may be saved as
# A file per video; for shards, an output shard per input shard (tar or parquet).
OUTPUT_FORMATS = ("npz", "webdataset", "parquet")
# Where frames become each backbone's RGB input (`VideoDataModule`'s convert_on).
CONVERT_ON = ("workers", "model")

DEFAULT_INPUT_DIR = Path("raw_videos")


def list_videos(
    input_dir: Path, input_list: Path | None, layout: str, audio_files: bool = False
) -> list[VideoEntry]:
    """The run's videos: from the list file if given, else found under the folder (with
    `audio_files`, audio files too); in the flat layout, named by file name (ids from a list
    keep their names)."""
    if input_list is not None:
        videos = read_video_list(input_list)
    else:
        videos = find_videos(input_dir, audio_files)
    return flat_layout(videos) if layout == "flat" else videos


def default_decode_threads(num_workers: int, processes_on_node: int = 1) -> int:
    """FFmpeg threads per decoding process: the cores shared out over the node's decoding
    processes (1 when decoding in the main process, whose cores the model needs).

    `processes_on_node` ranks each run `num_workers` workers. Where this process may use every
    core of the machine (no scheduler binding), the cores are shared over all those ranks'
    workers: 8 ranks x 8 workers on 64 cores get 1 thread each, not 8. Where a scheduler bound
    the rank to its own cores (SLURM's --cpus-per-task), they are that rank's alone.
    """
    if num_workers == 0:
        return 1
    cores = len(os.sched_getaffinity(0))
    sharing = processes_on_node if cores >= (os.cpu_count() or cores) else 1
    return max(1, cores // (num_workers * sharing))


WORKER_NICENESS = 10
# glibc's M_MMAP_THRESHOLD: allocations at least this large are mmapped and unmapped on free.
_M_MMAP_THRESHOLD = -3
WORKER_MMAP_THRESHOLD_BYTES = 1 << 20


def keep_large_buffers_out_of_the_heap() -> None:
    """Stop glibc from raising its mmap threshold as large blocks are freed.

    Every batch allocates and frees batch-sized buffers: in a worker the frames, the resized
    samples and the copy the DataLoader makes into shared memory; in the main process the
    float samples and the model's activations. glibc's default raises the mmap threshold to the
    size of each freed mmapped block (up to 32 MiB), after which such buffers come from the
    heap, whose fragmentation grew a worker from 0.5 to 1.1 GB over a 10-minute video, and
    made the main process swing between 0.9 and 1.2 GB (0.80-0.86 GB with the fix; tiny CLIP,
    60-minute video). A fixed threshold keeps them mmapped, so their memory returns to the
    system when freed.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    mallopt(_M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD_BYTES)


def _init_worker(worker_id: int) -> None:
    """Where workers and the model share cores, decoding (the smaller share of the work) should
    fill the cycles the model leaves idle rather than preempt the model's threads. Stop signals
    (SIGTERM from schedulers and Ctrl-C's SIGINT reach the whole process group) are the main
    process's to act on: it stops after the batch in hand and then shuts the workers down."""
    os.nice(WORKER_NICENESS)
    keep_large_buffers_out_of_the_heap()
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class VideoDataModule(LightningDataModule):
    """Finds the videos to do and feeds their clips, preprocessed as the model's InputSpec says.

    Args:
        input_dir: folder searched recursively for videos; or an fsspec URL (`s3://b/videos`),
            whose videos are read in place (pyav).
        input_list: a list of videos instead (.txt: a path per line, optionally a tab and an
            id; .csv: columns `path` and optionally `id`), relative to the list's folder; a
            video with an id writes `<id>.npz`.
        layout: "tree": outputs mirror the input folders; "flat": every output directly in
            the output folder, named by the video's file name (`{vid}.npz`).
        output_dir: where .npz files go (default `features/<model name>/`); videos whose .npz
            exists are skipped unless `overwrite`. A run over shards: a local folder or an
            fsspec URL, where output shards go.
        clip_len: clip length in seconds.
        batch_size: samples per forward pass (frames for image models, clips for video models);
            default: the model's own.
        num_workers: DataLoader worker processes that decode and resize.
        overwrite: redo videos whose .npz already exists; "changed": only those whose .npz no
            longer matches the run (other settings, or a changed video).
        decoder: video decoding library: pyav (frame-exact on every file type vfe was checked
            on), decord or torchcodec (CPU or CUDA; needs FFmpeg); docs/output.md: "Which files are
            exact".
        decode_device: cpu, or cuda to decode with NVDEC on the model's GPU (decoding then
            runs in the main process, so num_workers must be 0). With pyav the pictures stay on
            the GPU (needs convert_on model); a stream NVDEC cannot decode is decoded by FFmpeg's
            software decoder, and its file records `nvdec_frames: 0`.
        decode_streams: with num_workers 0, work items decoded at once in threads of the main
            process: several NVDEC streams keep the GPU's decoders busy (decode_device cuda).
        decode_threads: FFmpeg decoding threads per decoding process; default: the available
            cores divided by all decoding workers on the node (1 with num_workers 0).
        allow_concealed_errors: write videos in which the decoder reported errors in the data
            (and concealed them), recording the count in provenance; by default such a video is
            a failure.
        min_segment_seconds: a long video is split into segments decoded by several workers
            (pyav only) so that all workers get equal shares; no segment is shorter than this.
        clip_stride: seconds from one clip's start to the next (overlapping clips); it must
            divide clip_len. Default: clip_len (the contract's grid). With a stride, videos are
            not split into segments.
        tail: "keep" (every clip of the grid) or "round": no clip whose middle is after the
            video's end, as FFmpeg's `fps=1/clip_len` counts rows (10.5 s -> 5 two-second
            clips), for features to mix with Moment-DETR's/HERO's released ones.
        convert_on: where decoded frames become each backbone's RGB input: "workers"
            (swscale's RGB, resized in the decoding workers) or "model": 8-bit 4:2:0 BT.601/709
            frames leave the workers as decoded (YUV, 1.5 bytes a pixel) and are converted and
            resized on the model's device, so a worker only decodes (pyav only; other frames
            are converted in the workers; pixels within 2 levels of swscale's).
        part: "I/N": this job does part I (from 0) of N of the listed videos, cut the same way
            by every job (`vfe.planning.job_part`); default: a SLURM array task's, else all.
        output_dtype: "float32" or "float16" (as HERO's released files): the dtype `features`
            are saved in (computed in float32 or the precision asked, then cast).
        sparse_decode: where every backbone of a run uses a few frames of each clip
            (`frames_per_clip`), decode only those and the frames they depend on (pyav on the
            CPU; the same frames and pixels as decoding every frame, checked per file, which
            provenance records as `decode: sparse|sequential`); false: decode every frame.
        audio_stream: the audio stream audio backbones (pann) read, counted from 0 among the
            file's audio streams; default: the first.
        input_shards: webdataset tar shards instead of files (`vfe.sources.shards`): an fsspec
            URL or local path with brace ranges, `s3://bucket/videos/{00000..00999}.tar`;
            each sample's video is decoded from memory, its key names its output.
        shard_video_ext: a sample's video is its member with this extension (`mp4`); default:
            its first member with a video extension.
        output_format: "npz" (a file per video; the default for files), or for shards
            "webdataset" (a tar per input shard; the default) or "parquet"
            (`vfe.output.shard_sink`).
    """

    def __init__(
        self,
        input_dir: str | Path = DEFAULT_INPUT_DIR,
        output_dir: str | Path | None = None,
        clip_len: float = 2.0,
        batch_size: int | None = None,
        num_workers: int = 2,
        overwrite: bool | Literal["changed"] = False,
        decoder: str = DEFAULT_DECODER,
        decode_device: str = "cpu",
        decode_threads: int | None = None,
        min_segment_seconds: float = 30.0,
        allow_concealed_errors: bool = False,
        clip_stride: float | None = None,
        tail: str = "keep",
        input_list: Path | None = None,
        layout: str = "tree",
        convert_on: str = "workers",
        decode_streams: int = 1,
        part: str | None = None,
        output_dtype: str = "float32",
        sparse_decode: bool = True,
        audio_stream: int | None = None,
        input_shards: str | None = None,
        shard_video_ext: str | None = None,
        output_format: str | None = None,
    ) -> None:
        super().__init__()
        self.part: JobPart | None = job_part(part)
        if output_dtype not in OUTPUT_DTYPES:
            raise VfeError(
                f"--output_dtype {output_dtype!r} is not allowed; choose one of "
                f"{', '.join(OUTPUT_DTYPES)}"
            )
        self.output_dtype = output_dtype
        if not (math.isfinite(clip_len) and clip_len > 0):
            raise VfeError(f"--clip_len must be a positive number of seconds, got {clip_len}")
        if clip_stride is not None:
            stride_phases(clip_length_fraction(clip_len), clip_length_fraction(clip_stride))
        if tail not in TAIL_RULES:
            raise VfeError(
                f"--data.tail {tail!r} is not allowed; choose one of {', '.join(TAIL_RULES)}"
            )
        if batch_size is not None and batch_size < 1:
            raise VfeError(f"--batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise VfeError(f"--data.num_workers must be 0 or more, got {num_workers}")
        if decode_threads is not None and decode_threads < 0:
            raise VfeError(
                f"--data.decode_threads must be 0 (FFmpeg decides) or more, got {decode_threads}"
            )
        if not (math.isfinite(min_segment_seconds) and min_segment_seconds > 0):
            raise VfeError(
                "--data.min_segment_seconds must be a positive number of seconds, got "
                f"{min_segment_seconds}"
            )
        check_decoder(decoder, decode_device)
        if convert_on not in CONVERT_ON:
            raise VfeError(
                f"--data.convert_on {convert_on!r} is not allowed; choose one of "
                f"{', '.join(CONVERT_ON)}"
            )
        if convert_on == "model" and decoder != "pyav":
            raise VfeError(
                f"--data.convert_on model needs the decoded pictures, which only --data.decoder "
                f"pyav hands over; {decoder} gives RGB (use --data.convert_on workers)"
            )
        if decode_device == "cuda" and decoder == "pyav" and convert_on != "model":
            raise VfeError(
                "--data.decode_device cuda with --data.decoder pyav keeps the pictures on the "
                "GPU, where they are converted: add --data.convert_on model"
            )
        if decode_streams < 1:
            raise VfeError(f"--data.decode_streams must be at least 1, got {decode_streams}")
        if decode_streams > 1 and num_workers != 0:
            raise VfeError(
                f"--data.decode_streams {decode_streams} decodes in threads of the main process; "
                f"with --data.num_workers {num_workers} each worker decodes one stream (set "
                "--data.num_workers 0, or leave --data.decode_streams at 1)"
            )
        if decode_device == "cuda" and num_workers != 0:
            raise VfeError(
                "--data.decode_device cuda decodes in the main process (CUDA cannot run in "
                f"forked DataLoader workers): set --data.num_workers 0, not {num_workers}"
            )
        if layout not in LAYOUTS:
            raise VfeError(
                f"--layout {layout!r} is not allowed; choose one of {', '.join(LAYOUTS)}"
            )
        if output_format is not None and output_format not in OUTPUT_FORMATS:
            raise VfeError(
                f"--output_format {output_format!r} is not allowed; choose one of "
                f"{', '.join(OUTPUT_FORMATS)}"
            )
        if input_shards is not None:
            given = [
                f"{flag} {str(value)!r}"
                for flag, value, default in (
                    ("--input_dir", input_dir, DEFAULT_INPUT_DIR),
                    ("--input_list", input_list, None),
                )
                if (Path(value) if value is not None else None) != default
            ]
            if given:
                raise VfeError(
                    f"--input_shards {input_shards!r} and {given[0]}: give one source of videos"
                )
            if output_format == "npz":
                raise VfeError(
                    "--output_format npz writes a file per video; a run over --input_shards "
                    "writes shards (--output_format webdataset or parquet)"
                )
            if decoder != "pyav" or decode_device != "cpu":
                raise VfeError(
                    "--input_shards decodes each sample from memory, which --data.decoder pyav "
                    f"on the CPU does; not --data.decoder {decoder} on {decode_device}"
                )
            if layout != "tree":
                raise VfeError(
                    f"--layout {layout}: a run over shards names each output by its sample's key"
                )
        elif output_format not in (None, "npz"):
            raise VfeError(
                f"--output_format {output_format} mirrors input shards: give --input_shards, or "
                "--output_format npz for files"
            )
        elif is_url(output_dir):
            raise VfeError(
                f"--output_dir {str(output_dir)!r}: feature files go to a local folder; "
                "object storage takes the shards of a run over --input_shards"
            )
        if output_format == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise VfeError("--output_format parquet needs pyarrow: pip install -e '.[shards]'")
        if shard_video_ext is not None:
            if input_shards is None:
                raise VfeError("--shard_video_ext is for --input_shards")
            shard_video_ext = "." + shard_video_ext.lower().lstrip(".")
        if input_shards is None and input_list is not None:
            if Path(input_dir) != DEFAULT_INPUT_DIR:
                raise VfeError(
                    f"--input_dir {str(input_dir)!r} and --input_list {str(input_list)!r}: give "
                    "one of them"
                )
            if not Path(input_list).is_file():
                raise VfeError(f"--input_list {str(input_list)!r} is not a file")
        elif input_shards is None and not is_url(input_dir) and not Path(input_dir).is_dir():
            raise VfeError(f"--input_dir {str(input_dir)!r} is not a folder")
        if is_url(input_dir) and (decoder != "pyav" or decode_device != "cpu"):
            raise VfeError(
                f"--input_dir {input_dir!r}: videos at a URL are read in place by --data.decoder "
                f"pyav on the CPU, not --data.decoder {decoder} on {decode_device}"
            )
        self.input_shards = input_shards
        self.shard_video_ext = shard_video_ext
        self.output_format = output_format or ("webdataset" if input_shards else "npz")
        if input_shards is None and output_dir is not None:
            output_dir = Path(output_dir)
        self.input_dir = input_dir if is_url(input_dir) else Path(input_dir)
        self.input_list = None if input_list is None else Path(input_list)
        self.layout = layout
        self.output_dir = output_dir
        self.clip_len = clip_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.overwrite = overwrite
        self.decoder = decoder
        self.decode_device = decode_device
        self.decode_threads = decode_threads  # None: sized per node once the ranks are known
        self.allow_concealed_errors = allow_concealed_errors
        self.min_segment_seconds = min_segment_seconds
        # The contract's grid is recorded as no stride, whichever way it was asked for.
        self.clip_stride = None if clip_stride == clip_len else clip_stride
        self.tail = tail
        self.convert_on = convert_on
        self.decode_streams = decode_streams
        self.sparse_decode = sparse_decode
        self.audio_stream = audio_stream
        self.plan: PlannedRun | None = None  # decided at the start of predict (`plan_run`)
        self.audio_files = False  # audio files are listed too (every backbone is audio)

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module
        names = list(model.members())
        if self.batch_size is not None and len(names) > 1:
            raise VfeError(
                f"--batch_size {self.batch_size} is for one backbone; with several give each "
                f"its own (--model.<name>.batch_size N, for {', '.join(names)})"
            )
        if self.input_shards is None:
            for output_dir in model_output_dirs(self.output_dir, names).values():
                check_output_dir(output_dir)
        self.audio_files = all(is_audio(spec) for spec in model.input_specs.values())

    def provenance(self) -> dict[str, Any]:
        """The data settings each feature file records (`vfe.planning.provenance`)."""
        return {
            "clip_length": self.clip_len,
            "grid_version": GRID_VERSION,
            "decoder": self.decoder,
            "decoder_version": decoder_version(self.decoder),
            "allow_concealed_errors": self.allow_concealed_errors,
            "clip_stride": self.clip_stride,
            "tail": self.tail,
            "convert_on": self.convert_on,
            # Recorded only when not float32, so files made before the option still match.
            **({"output_dtype": self.output_dtype} if self.output_dtype != "float32" else {}),
        }

    def source(self) -> str:
        """Where the videos come from, for messages."""
        if self.input_shards is not None:
            return f"in {self.input_shards}"
        if self.input_list is not None:
            return f"in {self.input_list}"
        return f"under {self.input_dir}"

    def plan_run(self) -> PlannedRun:
        """Decide what this run does, once, before any decoding: which videos (and for which
        backbones), which rank and worker decodes what, and the run's id.

        Rank 0 lists the videos and decides what to skip; every rank gets its answer. This runs
        once the model is loaded (its weights' sha256 is part of what a file must match), and on
        one rank: ranks that list at different moments could see different finished files and
        disagree on the shards.
        """
        trainer = self.trainer
        model = trainer.lightning_module
        if self.input_shards is not None:
            return self.plan_shard_run()
        output_dirs = model_output_dirs(self.output_dir, list(model.members()))
        listing, work_by_rank, claims = None, None, None
        if trainer.global_rank == 0:
            settings = self.provenance()
            wanted = {
                name: run_provenance(member, settings, trainer.precision)
                for name, member in model.members().items()
            }
            try:
                videos = self.job_videos()
            except VfeError as error:  # reaches every rank below, so none waits in broadcast
                listing = RunPlan([], [], {}, str(error))
            else:
                listing = plan_run(videos, output_dirs, self.overwrite, wanted)
            owner = this_run(new_run_id())
            listing.run_id = owner.run_id
            if not listing.problem:
                # Before any rank decodes: the run's work in the folders is known to be alive.
                register(list(output_dirs.values()), owner)
                claims = Claims(output_dirs, owner.run_id, listing.seen)
                work_by_rank = self.plan_work(listing.todo, trainer.world_size)
        listing, work_by_rank, claims = trainer.strategy.broadcast(
            (listing, work_by_rank, claims), src=0
        )
        if listing.problem:  # raised on every rank, so none waits for the others
            raise VfeError(listing.problem)
        self.say_plan(output_dirs, listing.todo_models, listing.num_skipped, "video")
        return PlannedRun(
            videos=listing.todo,
            video_models=listing.todo_models,
            num_skipped=listing.num_skipped,
            run_id=listing.run_id,
            videos_per_rank=[
                len({item.video_index for items in workers for item in items})
                for workers in work_by_rank
            ],
            work=work_by_rank[trainer.global_rank],
            claims=claims,
        )

    def plan_shard_run(self) -> PlannedRun:
        """`plan_run` for a run over shards (`vfe.planning.shard_plan`): rank 0 lists the
        shards (this job's part of them) and reads their stats; every rank gets its share."""
        trainer = self.trainer
        model = trainer.lightning_module
        output_dirs = shard_output_dirs(self.output_dir, list(model.members()))
        shards, listing, shares, run_id, claims = [], None, None, "", None
        if trainer.global_rank == 0:
            run_id = new_run_id()
            settings = self.provenance()
            wanted = {
                name: run_provenance(member, settings, trainer.precision)
                for name, member in model.members().items()
            }
            try:
                shards = list_shards(self.input_shards)
                if self.part is not None:
                    chosen = select_part([shard.size_bytes for shard in shards], self.part)
                    say(
                        f"part {self.part} ({self.part.source}): {len(chosen)} of the "
                        f"{len(shards)} shards {self.source()}"
                    )
                    shards = [shards[index] for index in chosen]
                listing = plan_shards(
                    shards, output_dirs, self.overwrite, wanted, self.output_format
                )
            except VfeError as error:  # reaches every rank below, so none waits in broadcast
                listing = ShardListing([], {}, str(error))
            else:
                shares = share_shards(
                    listing.todo, shards, trainer.world_size, max(1, self.num_workers)
                )
                claims = self._shard_claims(output_dirs, run_id, listing)
        shards, listing, shares, run_id, claims = trainer.strategy.broadcast(
            (shards, listing, shares, run_id, claims), src=0
        )
        if listing.problem:
            raise VfeError(listing.problem)
        todo_models = [models for _, models in listing.todo]
        self.say_plan(output_dirs, todo_models, listing.num_skipped, "shard")
        return PlannedRun(
            videos=[],
            video_models=[],
            num_skipped=listing.num_skipped,
            run_id=run_id,
            videos_per_rank=[sum(len(worker) for worker in rank) for rank in shares],
            work=[
                [ShardItem(number, shards[number], models) for number, models in worker]
                for worker in shares[trainer.global_rank]
            ],
            shards=shards,
            claims=claims,
            shard_todo=listing.todo,
        )

    @staticmethod
    def _shard_claims(
        output_dirs: dict[str, str], run_id: str, listing: ShardListing
    ) -> Claims | None:
        """Local output folders: the run records itself as their owner (before any rank
        reads) and claims each shard before reading it, so jobs sharing the folders share
        the shards. Folders at URLs: none (jobs there divide the shards by --part)."""
        if not listing.todo or any(is_url(folder) for folder in output_dirs.values()):
            return None
        folders = {name: Path(folder) for name, folder in output_dirs.items()}
        register(list(folders.values()), this_run(run_id))
        return Claims(folders, run_id, listing.seen, names_output=True)

    def say_plan(
        self,
        output_dirs: dict[str, Any],
        todo_models: list[tuple[str, ...]],
        num_skipped: dict[str, int],
        unit: str,
    ) -> None:
        """Per backbone: how many videos (or shards) there are, done and to do, and where."""
        for name, folder in output_dirs.items():
            to_do = sum(name in models for models in todo_models)
            skipped = num_skipped[name]
            label = f"{name}: " if len(output_dirs) > 1 else ""
            say(
                f"{label}{count(to_do + skipped, unit)} {self.source()}, {skipped} already "
                f"done (skipped), {to_do} to extract -> {folder}"
            )

    def job_videos(self) -> list[VideoEntry]:
        """The videos listed, or this job's part of them (`--part I/N`, a SLURM array)."""
        videos = list_videos(self.input_dir, self.input_list, self.layout, self.audio_files)
        if self.part is None:
            return videos
        chosen = select_part([video.size_bytes for video in videos], self.part)
        say(
            f"part {self.part} ({self.part.source}): {len(chosen)} of the {len(videos)} videos "
            f"{self.source()}"
        )
        return [videos[index] for index in chosen]

    def plan_work(self, videos: list[VideoEntry], num_ranks: int) -> list[list[list[WorkItem]]]:
        """Every rank's work items, one list per DataLoader worker (`vfe.data.work_plan`);
        decided on rank 0, which reads the durations of the videos a cut falls inside."""
        sizes = [video.size_bytes for video in videos]
        duration_of = None
        # A stride's clips overlap segment boundaries, and an FFmpeg recipe cuts its own rows:
        # their videos are decoded whole.
        specs = self.trainer.lightning_module.input_specs.values()
        recipes = any(not is_audio(spec) and spec.ffmpeg_recipe is not None for spec in specs)
        if supports_segments(self.decoder) and self.clip_stride is None and not recipes:
            bad_file = file_errors(self.decoder)

            def duration_of(video_index: int) -> float | None:
                try:
                    return split_duration_seconds(videos[video_index].path, self.decoder)
                except bad_file:  # a broken file is not split; decoding it records why
                    return None

        return plan_ranks(
            list(range(len(videos))),
            sizes,
            num_ranks,
            max(1, self.num_workers, self.decode_streams),  # equal shares for each decoder
            clip_length_fraction(self.clip_len),
            duration_of,
            self.min_segment_seconds,
        )

    def resolved_decode_threads(self) -> int:
        """`decode_threads`, or the default for this node's ranks and workers."""
        if self.decode_threads is not None:
            return self.decode_threads
        ranks_on_node = self.trainer.num_devices if self.trainer.world_size > 1 else 1
        return default_decode_threads(self.num_workers, ranks_on_node)

    def predict_dataloader(self) -> DataLoader:
        keep_large_buffers_out_of_the_heap()  # the main process's batches (workers: _init_worker)
        specs: dict[str, InputSpec] = self.trainer.lightning_module.input_specs
        check_recipe_settings(
            specs,
            clip_length_fraction(self.clip_len),
            self.decoder,
            self.decode_device,
            self.clip_stride,
        )
        self.plan = plan = self.plan_run()
        root_device = self.trainer.strategy.root_device
        if self.convert_on == "model" and root_device.type == "cpu":
            say(
                "--data.convert_on model with the model on the CPU: colour conversion and "
                "resizing run in the main process, far slower there than in the workers "
                "(docs/benchmarks.md); it is meant for GPUs"
            )
        decode_device = "cpu"
        if self.decode_device == "cuda":
            if root_device.type != "cuda":
                raise VfeError(
                    f"--data.decode_device cuda decodes on the model's GPU, but the model runs on "
                    f"{root_device}; use --device cuda or --data.decode_device cpu"
                )
            decode_device = str(root_device)
        dataset = VideoClipDataset(
            plan.videos,
            specs,
            clip_len_seconds=self.clip_len,
            batch_sizes={
                name: self.batch_size or spec.default_batch_size for name, spec in specs.items()
            },
            work=plan.work,
            decoder=self.decoder,
            decode_device=decode_device,
            decode_threads=self.resolved_decode_threads(),
            video_models=plan.video_models,
            allow_concealed_errors=self.allow_concealed_errors,
            clip_stride_seconds=self.clip_stride,
            tail=self.tail,
            convert_on=self.convert_on,
            decode_streams=self.decode_streams,
            claims=plan.claims,
            sparse_decode=self.sparse_decode,
            audio_stream=self.audio_stream,
            audio_files=self.audio_files,
            shard_video_ext=self.shard_video_ext,
        )
        # Garbage in reference cycles that holds FFmpeg objects (decoded frames, their swscale
        # contexts) would be freed in the forked workers, whose frees wait on threads only this
        # process has: freed here, before the workers fork.
        gc.collect()
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=root_device.type == "cuda" and decode_device == "cpu",
            worker_init_fn=_init_worker,
        )
