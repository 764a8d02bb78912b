"""JoinVideos: segments (file-backed VIDEOs) one after the other into one MP4 with their sound, streamed from file to
file, so a long video never becomes an IMAGE batch in memory."""

from __future__ import annotations

import os
import uuid

import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import InputImpl, io

from ..hallo_core.media.video import join_videos
from .hallo_types import CATEGORY
from .segment_node import send_text, video_preview


class HalloJoinVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloJoinVideos",
            display_name="Hallo Join Videos",
            category=CATEGORY,
            description="Joins the segments of one long video (the denoise nodes' 'video' outputs) in order, with "
                        "their sound, into one file-backed VIDEO: for SaveVideo or VQTemporalUpscale4K.",
            inputs=[
                io.Video.Input("video_1", tooltip="the first segment"),
                io.Video.Input("video_2", tooltip="the next segment"),
                io.Video.Input("video_3", optional=True, tooltip="more segments (or chain JoinVideos)"),
                io.Video.Input("video_4", optional=True),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip="the joined video with its sound")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, video_1, video_2, video_3=None, video_4=None) -> io.NodeOutput:
        sources = [v.get_stream_source() for v in (video_1, video_2, video_3, video_4) if v is not None]
        folder = os.path.join(folder_paths.get_output_directory(), "hallo_renders", "joined")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"joined_{uuid.uuid4().hex[:12]}.mp4")
        bar = comfy.utils.ProgressBar(1, node_id=cls.hidden.unique_id)
        frames = join_videos(sources, path)
        bar.update_absolute(1, 1)
        send_text(f"{len(sources)} segments, {frames} frames ({frames / 25:.2f} s at 25 fps)", cls.hidden.unique_id)
        return io.NodeOutput(InputImpl.VideoFromFile(path), ui=video_preview(path))
