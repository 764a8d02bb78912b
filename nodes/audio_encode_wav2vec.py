"""AudioEncodeWav2Vec: core AUDIO -> the model's wav2vec2 features (optionally of the separated vocals)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .hallo_types import CATEGORY, HalloAudioType, HalloModelType
from .segment_node import send_text


class HalloAudioEncodeWav2Vec(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HalloAudioEncodeWav2Vec",
            display_name="Hallo Audio Encode (wav2vec2)",
            category=CATEGORY,
            description="wav2vec2 features of the speech, 25 per second, exactly as the model's official code "
                        "computes them (Hallo3: 49-frame clips; Hallo/Hallo2: 16-frame clips). The video keeps the "
                        "original audio; the model is driven by the separated vocals by default.",
            inputs=[
                HalloModelType.Input("model"),
                io.Audio.Input("audio", tooltip="the speech (LoadAudio); its length sets the video's"),
                io.Boolean.Input("separate_vocals", default=True,
                                 tooltip="drive the model with the vocals separated from music and noise "
                                         "(official); off uses the audio as it is"),
                io.Boolean.Input("audio_pieces", default=False, optional=True,
                                 tooltip="Hallo2 only: encode the speech in 60 s pieces as its official long-video "
                                         "script does (changes the features near piece boundaries)"),
            ],
            outputs=[HalloAudioType.Output(display_name="speech", tooltip="connect to the denoise nodes")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, audio, separate_vocals, audio_pieces=False) -> io.NodeOutput:
        backbone = model.backbone
        speech = backbone.prepare_speech(audio, separate_vocals=separate_vocals, long_audio_pieces=audio_pieces)
        plan = backbone.plan(speech.total_frames, backbone.default_settings())
        summary = "; ".join([f"{speech.audio.seconds:.2f} s of speech: {speech.total_frames} frames at 25 fps, "
                             f"{plan.num_clips} clips of {plan.new_frames_per_clip} frames", *speech.notes])
        send_text(summary, cls.hidden.unique_id)
        return io.NodeOutput(speech)
