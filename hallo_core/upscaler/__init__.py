"""Hallo2's temporal VQ face upscaler: restore faces consistently across frames and stream video up to 4096 px.

| module | what |
| --- | --- |
| `weights` | `load_temporal_codeformer(path)`: `hallo2/net_g.pth` (params_ema) or safetensors, strict |
| `video` | `VideoFaceUpscaler(...).stream(frames)`: the streaming pipeline; `window_plan`, `output_size` |
| `face_alignment` | SCRFD detection (5 points), FFHQ-512 similarity alignment and its inverse |
| `face_parsing` | ParseNet (`parsing_parsenet.pth`) and the paste-back parsing mask |
| `paste_back` | blending a restored face into the upscaled frame (facelib's steps, on the device) |
| `background` | background upsampling: RealESRGAN x2plus via spandrel or any `upscale_fn`, tiled; or Lanczos |
| `image_ops` | OpenCV's warpAffine / Lanczos-4 / erode / GaussianBlur conventions as torch functions |
| `video_file` | `build_video_upscaler(...)` from model files; `upscale_video_file(in, out, ...)` to an MP4 with the sound |
| `temporal_codeformer` | the network itself, `TemporalCodeFormer` |
"""

from .background import BackgroundUpscaler, load_background_model
from .face_alignment import ScrfdFaceDetector
from .face_parsing import load_parsenet
from .video import UpscaleSettings, VideoFaceUpscaler, output_size, window_plan
from .video_file import build_video_upscaler, upscale_video_file
from .weights import load_temporal_codeformer

__all__ = [
    "BackgroundUpscaler", "ScrfdFaceDetector", "build_video_upscaler", "UpscaleSettings", "VideoFaceUpscaler", "load_background_model",
    "load_parsenet", "load_temporal_codeformer", "output_size", "upscale_video_file",
    "window_plan",
]
