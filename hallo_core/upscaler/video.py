"""The streaming video pipeline of the Hallo2 face upscaler (official `scripts/video_sr.py`, done as a stream).

Frames come from any iterator and upscaled frames are yielded in order, one at a time, so a long video can go straight
into an encoder; the pipeline holds at most one temporal window of input frames.

Per frame: detect the face and align it to the FFHQ 512 crop (face_alignment.py). Per window of 16 frames (the
official chunking: stride 12, the first 4 frames of every window after the first are context from the previous one
and their outputs are not used again): the temporal CodeFormer restores all crops of the window in one batch; each new
frame's background is upsampled (background.py), its restored face pasted back with the parsing mask
(paste_back.py, face_parsing.py), and the frame is yielded as 8-bit RGB.

Differences from `scripts/video_sr.py`, all fixes of its flaws: the last frame is kept (official drops it); the
largest face is used (official: the lowest-scoring); detection and background upsampling run once per frame (official
repeats them for the 4 context frames of each window); no PNG round trip, no frame list in memory; all image work
stays on the device. The official pre-resize of frames whose short side is below 512 is not done, so a 480x720 frame
at scale 4 gives 1920x2880 (official: 2048x3072).

`face_upsample` is the official `--face_upsample` (off by default in `video_sr.py`, on in Hallo2's README command):
each restored face goes through the background's super-resolution model too (x2, then Lanczos to 512 s), is pasted
at that size without the 0.5 s offset, and its parsing mask is computed on the face resized back to 512 (bilinear)
and resized up to 512 s, as facelib does. It needs a model background (official: RealESRGAN is always used for it).

Not implemented: `--has_aligned`, `--draw_box`, and facelib's grey-frame handling (the restored face of a near-grey
frame is made grey).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .background import BackgroundUpscaler
from .face_alignment import FACE_SIZE, FaceDetector, FaceTrack, align_faces, alignment_matrix, inverse_alignment
from .face_parsing import ParseNet, parsing_mask
from .paste_back import paste_face
from .temporal_codeformer import TemporalCodeFormer

WINDOW = 16  # frames per network call (training video_length)
OVERLAP = 4  # context frames shared with the previous window
MAX_LONG_SIDE = 4096

RestoreFn = Callable[[torch.Tensor], torch.Tensor]


def window_plan(length: int, window: int = WINDOW, overlap: int = OVERLAP) -> list[tuple[int, int]]:
    """The official windows [start, end) over `length` frames: [0,16), [12,28), [24,40), ..., the last one short."""
    plan, start, end = [], 0, 0
    while start < length and end < length:
        end = min(start + window, length)
        plan.append((start, end))
        start = end - overlap
    return plan


def output_size(height: int, width: int, scale: float | None = None,
                target_long_side: int | None = None) -> tuple[int, int, float]:
    """(out_height, out_width, scale). `scale` gives int(h*s) x int(w*s) as official; `target_long_side` scales the
    long side to that many pixels, each side rounded to an even number (H.264 needs even sizes)."""
    if (scale is None) == (target_long_side is None):
        raise InputError("give exactly one of scale (e.g. 2 or 4) and target_long_side (e.g. 3840)")
    if target_long_side is not None:
        if not 0 < target_long_side <= MAX_LONG_SIDE:
            raise InputError(f"target long side {target_long_side} is out of range; use 1..{MAX_LONG_SIDE}")
        scale = target_long_side / max(height, width)
        out_h, out_w = (2 * round(height * scale / 2), 2 * round(width * scale / 2))
    else:
        if scale < 1:
            raise InputError(f"scale {scale} is below 1; the upscaler only enlarges (use 2 or 4)")
        out_h, out_w = int(height * scale), int(width * scale)
    if max(out_h, out_w) > MAX_LONG_SIDE:
        raise InputError(f"output {out_w}x{out_h} is larger than {MAX_LONG_SIDE} px on the long side; "
                         f"use a smaller scale or target_long_side <= {MAX_LONG_SIDE}")
    return out_h, out_w, float(scale)


@dataclass
class UpscaleSettings:
    scale: float | None = 4.0
    target_long_side: int | None = None  # instead of scale
    fidelity_weight: float = 0.5  # official -w default; 0 = codebook only, 1 = closest to the input
    window: int = WINDOW
    overlap: int = OVERLAP
    background_batch: int = 4  # frames upsampled and pasted together (bounds memory at 4K)
    network_dtype: torch.dtype = torch.float32  # official: fp32
    network_frame_chunk: int | None = None  # frames per convolution pass: less memory, same numbers up to rounding
    round_blend: bool = False  # official truncates the blended pixel; True rounds
    face_upsample: bool = False  # official --face_upsample: the SR model on each restored face (needs a model)


@dataclass
class _Frame:
    pixels: torch.Tensor | None  # (3, H, W) RGB levels on the device; dropped once output
    matrix: np.ndarray | None  # frame -> crop similarity, None without a face
    crop: torch.Tensor | None = None  # (3, 512, 512) levels
    restored: torch.Tensor | None = None  # (3, 512, 512) levels


def network_restore_fn(network: TemporalCodeFormer, fidelity_weight: float,
                       frame_chunk: int | None = None) -> RestoreFn:
    def restore(crops: torch.Tensor) -> torch.Tensor:
        return network(crops, w=fidelity_weight, adain=True, frame_chunk=frame_chunk)

    return restore


class VideoFaceUpscaler:
    """Streams frames through detection, the temporal face restorer, background upsampling and paste-back.

    `network` is the loaded `TemporalCodeFormer` (or any `restore(crops (1, F, 3, 512, 512) in [-1, 1]) -> same`);
    `detector` None means no face work at all (background only); `parsenet` None pastes with the soft square mask
    only (see face_parsing.py). Models must already be on `device`.
    """

    def __init__(self, network: TemporalCodeFormer | RestoreFn, detector: FaceDetector | None,
                 background: BackgroundUpscaler, parsenet: ParseNet | None = None,
                 settings: UpscaleSettings | None = None, device: torch.device | str = "cpu"):
        self.settings = settings = settings or UpscaleSettings()
        if not 0.0 <= settings.fidelity_weight <= 1.0:
            raise InputError(f"fidelity weight {settings.fidelity_weight} is out of range; use 0..1")
        if not 0 <= settings.overlap < settings.window:
            raise InputError(f"overlap {settings.overlap} must be below the window {settings.window}")
        if settings.face_upsample and not background.uses_model:
            raise InputError("face upsampling needs a super-resolution model (RealESRGAN_x2plus) for the background; "
                             "give one, or turn face upsampling off")
        if isinstance(network, TemporalCodeFormer):
            network = network_restore_fn(network, settings.fidelity_weight, settings.network_frame_chunk)
        self.restore = network
        self.detector = detector
        self.background = background
        self.parsenet = parsenet
        self.device = torch.device(device)
        self.track: FaceTrack | None = None

    @torch.inference_mode()
    def stream(self, frames: Iterable) -> Iterator[torch.Tensor]:
        """Upscaled frames, (H_out, W_out, 3) uint8 RGB CPU tensors, one per input frame, in order.

        Input frames: (H, W, 3) RGB, uint8 (numpy or torch) or float in [0, 1] (rounded to 8-bit levels); all the
        same size.
        """
        s = self.settings
        self.track = FaceTrack(self.detector) if self.detector is not None else None
        source = iter(frames)
        frame_shape = None
        size = None
        tail: list[_Frame] = []
        while True:
            new: list[_Frame] = []
            for raw in source:
                pixels, pixels_u8 = self._to_device(raw)
                if frame_shape is None:
                    frame_shape = pixels.shape
                    size = output_size(frame_shape[1], frame_shape[2], s.scale, s.target_long_side)
                elif pixels.shape != frame_shape:
                    raise InputError(f"frame size changed from {tuple(frame_shape[1:])} to {tuple(pixels.shape[1:])};"
                                     " all frames of a video must have the same size")
                new.append(_Frame(pixels, self._face_matrix(pixels_u8)))
                if len(tail) + len(new) == s.window:
                    break
            if not new:
                return
            self._restore_window(tail + new)
            yield from self._compose(new, size)
            if len(tail) + len(new) < s.window:
                return  # the source ran out inside this window
            tail = [_Frame(None, f.matrix, f.crop) for f in (tail + new)[-s.overlap:]] if s.overlap else []

    def _to_device(self, raw) -> tuple[torch.Tensor, np.ndarray | None]:
        tensor = torch.as_tensor(raw)
        if tensor.dim() != 3 or tensor.shape[-1] != 3:
            raise InputError(f"frames must be (H, W, 3) RGB images, got shape {tuple(tensor.shape)}")
        if tensor.dtype == torch.uint8:
            levels_u8 = tensor
        elif tensor.is_floating_point():
            levels_u8 = None
        else:
            raise InputError(f"frames must be uint8 or float in [0, 1], got {tensor.dtype}")
        pixels = tensor.to(self.device).permute(2, 0, 1).float()
        if levels_u8 is None:  # float frames become 8-bit levels: the official pipeline works on uint8 frames
            pixels = (pixels * 255.0).round_().clamp_(0, 255)
        frame_u8 = None
        if self.track is not None:
            frame_u8 = (levels_u8 if levels_u8 is not None else
                        pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)).cpu().numpy()
        return pixels, frame_u8

    def _face_matrix(self, frame_u8: np.ndarray | None) -> np.ndarray | None:
        if self.track is None:
            return None
        landmarks = self.track(frame_u8)
        return alignment_matrix(landmarks) if landmarks is not None else None

    def _restore_window(self, window: list[_Frame]) -> None:
        """Crop the new faces, run the network over every face of the window (context frames included)."""
        to_crop = [f for f in window if f.matrix is not None and f.crop is None]
        if to_crop:
            crops = align_faces(torch.stack([f.pixels for f in to_crop]), np.stack([f.matrix for f in to_crop]))
            for frame, crop in zip(to_crop, crops):
                frame.crop = crop
        faces = [f for f in window if f.crop is not None]
        if not faces:
            return
        clip = (torch.stack([f.crop for f in faces]) / 255.0 - 0.5) / 0.5
        out = self.restore(clip[None].to(self.settings.network_dtype))[0].float()
        # tensor2img: clamp to [-1, 1], to [0, 255], round (the official restored face is uint8)
        restored = ((out.clamp(-1, 1) + 1) / 2 * 255.0).round()
        for frame, face in zip(faces, restored):
            frame.restored = face

    def _compose(self, frames: list[_Frame], size: tuple[int, int, float]) -> Iterator[torch.Tensor]:
        out_h, out_w, scale = size
        for start in range(0, len(frames), max(1, self.settings.background_batch)):
            batch = frames[start:start + self.settings.background_batch]
            backgrounds = self.background(torch.stack([f.pixels for f in batch]), (out_h, out_w))
            faces = [f for f in batch if f.restored is not None]
            pasted, masks = self._faces_to_paste(faces, scale)
            upsampled = self.settings.face_upsample
            for frame, background in zip(batch, backgrounds):
                if frame.restored is not None:
                    background = paste_face(background, pasted[id(frame)],
                                            inverse_alignment(frame.matrix, scale, upsampled_face=upsampled),
                                            scale, masks.get(id(frame)), self.settings.round_blend)
                frame.pixels = frame.restored = None
                yield background.to(torch.uint8).permute(1, 2, 0).contiguous().cpu()

    def _faces_to_paste(self, frames: list[_Frame], scale: float) -> tuple[dict, dict]:
        """The face each frame pastes (the restored crop, or it upsampled) and its parsing mask, by frame id."""
        if not frames:
            return {}, {}
        faces = torch.stack([f.restored for f in frames])
        parse_input = faces
        if self.settings.face_upsample:
            size = int(FACE_SIZE * scale)
            faces = self.background(faces, (size, size))
            # facelib parses the upsampled face resized back to 512 (cv2 INTER_LINEAR on the 8-bit face)
            parse_input = F.interpolate(faces, size=(FACE_SIZE, FACE_SIZE), mode="bilinear",
                                        align_corners=False).round_().clamp_(0, 255)
        masks = None
        if self.parsenet is not None:
            masks = parsing_mask(self.parsenet, parse_input)
            if self.settings.face_upsample:  # and resizes the mask to the face's size (INTER_LINEAR)
                masks = F.interpolate(masks, size=faces.shape[-2:], mode="bilinear", align_corners=False)
        return ({id(f): face for f, face in zip(frames, faces)},
                {id(f): mask for f, mask in zip(frames, masks)} if masks is not None else {})

