"""AudioEncodeWav2Vec: core AUDIO -> Hallo3's wav2vec2 features (optionally of the separated vocals)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from .hallo_types import CATEGORY, HalloAudioType, HalloModelType


class HalloAudioEncodeWav2Vec(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloAudioEncodeWav2Vec",
            display_name="Hallo Audio Encode (wav2vec2)",
            category=CATEGORY,
            description="wav2vec2 features of the speech, 25 per second, exactly as Hallo3 computes them. The "
                        "video keeps the original audio; the model is driven by the separated vocals by default.",
            inputs=[
                HalloModelType.Input("model"),
                io.Audio.Input("audio"),
                io.Boolean.Input("separate_vocals", default=True,
                                 tooltip="drive the model with the vocals separated from music and noise "
                                         "(official); off uses the audio as it is"),
            ],
            outputs=[HalloAudioType.Output(display_name="speech")],
        )

    @classmethod
    def execute(cls, model, audio, separate_vocals) -> io.NodeOutput:
        backbone = model.backbone
        speech = backbone.prepare_speech(audio, separate_vocals=separate_vocals)
        plan = backbone.plan(speech.total_frames, backbone.default_settings())
        summary = (f"{speech.audio.seconds:.2f} s of speech: {speech.total_frames} frames at 25 fps, "
                   f"{plan.num_clips} clips of {plan.new_frames_per_clip} frames")
        return io.NodeOutput(speech, ui=ui.PreviewText(summary))
