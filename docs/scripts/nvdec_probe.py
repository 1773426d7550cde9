"""The GPU run's first 20 seconds: machine facts and whether NVDEC works the way vfe uses it.

Prints one JSON object (and writes it to argv[1] if given): the GPU and driver, whether the
driver's NVDEC library loads, and for a PyAV-written 720p H.264 file decoded with vfe's options
*after* torch has created its CUDA context (the real order): the frame's format and software
format, whether the planes come through DLPack as vfe takes them, and — to show what the fixes
were for — whether PyAV's default options (primary_ctx=1) and `torch.from_dlpack(plane)` fail.
Runs anywhere: without a GPU it says so and exits 0 (`--dry-run` of docs/scripts/gpu_check.sh).
"""

import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _try(function) -> dict:
    started = time.perf_counter()
    try:
        value = function()
    except Exception as error:  # a probe: every outcome is a finding
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    return {"ok": True, "value": value, "seconds": round(time.perf_counter() - started, 3)}


def main() -> dict:
    import av
    import torch

    facts: dict = {"python": sys.version.split()[0], "av": av.__version__}
    facts["torch"] = torch.__version__
    smi = _try(
        lambda: subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    )  # fmt: skip
    facts["nvidia_smi"] = smi
    facts["libnvcuvid"] = _try(lambda: bool(ctypes.CDLL("libnvcuvid.so.1")))
    facts["cuda_available"] = torch.cuda.is_available()
    if not torch.cuda.is_available():
        facts["verdict"] = "no CUDA GPU here: nothing to probe"
        return facts

    from av.codec.hwaccel import HWAccel

    from vfe.bench.synthetic import write_video
    from vfe.decoding import pyav

    folder = Path(tempfile.mkdtemp())
    video = write_video(folder / "720p.mp4", 10, 25, 720, 1280)
    torch.zeros(1, device="cuda")  # torch's context first, as in a run (the model is on the GPU)

    def first_frame(options: dict | None):
        pyav.make_torch_context_current("cuda:0")
        accel = HWAccel("cuda", device="0", allow_software_fallback=False, is_hw_owned=True,
                        options=options)  # fmt: skip
        with av.open(str(video), hwaccel=accel) as container:
            frame = next(container.decode(video=0))
            software = frame.sw_format.name if frame.sw_format else None
            luma = pyav.plane_tensor(frame.planes[0])
            torch.cuda.synchronize()
            return {
                "format": frame.format.name,
                "sw_format": software,
                "luma": [list(luma.shape), str(luma.device), str(luma.dtype)],
                "luma_mean": round(float(luma.float().mean()), 2),
            }

    facts["vfe_options"] = _try(lambda: first_frame(dict(pyav.NVDEC_OPTIONS)))
    facts["pyav_default_options"] = _try(lambda: first_frame(None))

    def from_dlpack_of_the_plane():
        with av.open(str(video), hwaccel=pyav._nvdec("cuda:0")) as container:
            frame = next(container.decode(video=0))
            return str(torch.from_dlpack(frame.planes[0]).shape)

    facts["torch_from_dlpack_of_the_plane"] = _try(from_dlpack_of_the_plane)

    def vfe_decoder():
        decoded = pyav.PyAVVideo(video, "cuda:0")
        frames = list(decoded.frames())
        picture = frames[0].packed()
        return {
            "frames": len(frames),
            "hardware_frames": decoded.hardware_frames,
            "packed_on": None if picture is None else str(picture.device),
        }

    facts["vfe_decoder"] = _try(vfe_decoder)
    works = facts["vfe_options"]["ok"] and facts["vfe_decoder"]["ok"]
    works = works and facts["vfe_decoder"]["value"]["hardware_frames"] == 10
    facts["verdict"] = "NVDEC works as vfe uses it" if works else "NVDEC does NOT work: see above"
    return facts


if __name__ == "__main__":
    result = main()
    text = json.dumps(result, indent=1, default=str)
    print(text, flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
