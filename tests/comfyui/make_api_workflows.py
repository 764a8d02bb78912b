"""Write the shipped API-format workflows (workflows/api/*.json), the source of the UI-format ones
(tests/comfyui/make_ui_workflows.py turns them into UI files with the real frontend).

    python tests/comfyui/make_api_workflows.py

Every long output travels as a file-backed VIDEO (denoise 'video' -> JoinVideos -> upscaler -> SaveVideo), never as
an IMAGE batch of the whole video, so memory stays bounded whatever the speech's length.
"""
from __future__ import annotations

import json
from pathlib import Path

API = Path(__file__).resolve().parents[2] / "workflows" / "api"

HALLO3_FILES = {"official_models": "none", "diffusion_model": "hallo3/hallo3_transformer_bf16.safetensors",
                "reference": "hallo3/hallo3_reference_bf16.safetensors", "vae": "cogvideox_5b_i2v_vae_bf16.safetensors",
                "text_encoder": "t5-v1_1-xxl"}
UNET_FILES = {"official_models": "none", "reference": "none", "vae": "sd_vae_ft_mse_fp16.safetensors",
              "text_encoder": "none"}
COMMON_FILES = {"audio_encoder": "wav2vec2-base-960h", "face_models": "models/antelopev2",
                "vocal_separator": "Kim_Vocal_2.onnx"}
ENGINE = {"precision": "auto", "memory": "balanced", "attention": "comfy", "compile": True, "size": 512}
SPLIT_SECONDS = {"hallo3": 3.76, "unet": 3.84}  # where segment 2 starts: on the clip grid (2 x 47 and 6 x 16 frames)
UPSCALE = {"parsing_model": "parsing_parsenet.pth", "target": "4K (long side 3840)", "scale": 4.0,
           "fidelity_weight": 0.5, "face_upsample": False}


class Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, title: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return node_id

    def write(self, name: str) -> None:
        (API / f"{name}.json").write_text(json.dumps(self.nodes, indent=1) + "\n")


def _inputs(graph: Graph, backbone: str, upscaler: bool = False, prompt: str = "") -> tuple[str, str, str, str]:
    """Portrait, speech, model, speech features and identity: every workflow's left half."""
    image = graph.add("LoadImage", "Portrait", image="portrait.jpg")
    audio = graph.add("LoadAudio", "Speech", audio="speech.wav")
    files = HALLO3_FILES if backbone == "hallo3" else {
        **UNET_FILES, "diffusion_model": f"{backbone}/{backbone}_unet_fp16.safetensors"}
    model = graph.add("LoadHalloModel", f"Load {backbone.capitalize()} model", **files, **COMMON_FILES,
                      upscaler="hallo2_net_g.pth" if upscaler else "none", **ENGINE)
    speech = graph.add("HalloAudioEncodeWav2Vec", "Speech features", model=[model, 0], audio=[audio, 0],
                       separate_vocals=True, audio_pieces=False)
    identity = graph.add("HalloIdentityReference", "Portrait and prompt" if backbone == "hallo3" else
                         "Portrait and regions", model=[model, 0], image=[image, 0], prompt=prompt,
                         allow_no_face=False)
    return model, speech, identity, image


def _denoise(graph: Graph, backbone: str, title: str, model, speech, identity, motion=None, start=0.0, duration=0.0,
             **weights) -> str:
    inputs = {"model": [model, 0], "speech": [speech, 0], "identity": [identity, 0]}
    if motion is not None:
        inputs["motion"] = [motion, 3]
    common = {"start_seconds": start, "duration_seconds": duration, "cfg": 3.5, "seed": 42}
    if backbone == "hallo3":
        return graph.add("HalloDiTDenoise", title, **inputs, **common, steps=50)
    return graph.add("HalloUNetDenoise", title, **inputs, **common, steps=40, pose_weight=weights.get("pose", 1.0),
                     expression_weight=weights.get("expression", 1.0), lip_weight=weights.get("lip", 1.0))


def portrait_to_video(name: str, backbone: str, prompt: str = "", **weights) -> None:
    graph = Graph()
    model, speech, identity, _ = _inputs(graph, backbone, prompt=prompt)
    video = _denoise(graph, backbone, "Render the video", model, speech, identity, **weights)
    graph.add("SaveVideo", "Save the video", video=[video, 2], filename_prefix=f"hallo/{name}", format="mp4",
              codec="h264")
    graph.write(name)


def long_video(name: str, backbone: str, upscale: bool, prompts: tuple[str, str] = ("", "")) -> None:
    """Two chained segments (the second continues the first exactly), joined, optionally upscaled to 4K."""
    graph = Graph()
    model, speech, identity, image = _inputs(graph, backbone, upscaler=upscale, prompt=prompts[0])
    split = SPLIT_SECONDS["hallo3" if backbone == "hallo3" else "unet"]
    first = _denoise(graph, backbone, "Segment 1", model, speech, identity, duration=split)
    second_identity = identity
    if backbone == "hallo3":  # Hallo3 takes a prompt: the second segment gets its own
        second_identity = graph.add("HalloIdentityReference", "Portrait and second prompt", model=[model, 0],
                                    image=[image, 0], prompt=prompts[1], allow_no_face=False)
    second = _denoise(graph, backbone, "Segment 2 (continues segment 1)", model, speech, second_identity,
                      motion=first, start=split)
    joined = graph.add("HalloJoinVideos", "Join the segments", video_1=[first, 2], video_2=[second, 2])
    video = [joined, 0]
    if upscale:
        background = graph.add("UpscaleModelLoader", "Background upscaler", model_name="RealESRGAN_x2plus.pth")
        upscaled = graph.add("HalloVQTemporalUpscale4K", "Upscale to 4K", model=[model, 0], video=[joined, 0],
                             upscale_model=[background, 0], **UPSCALE)
        video = [upscaled, 1]
    graph.add("SaveVideo", "Save the video", video=video, filename_prefix=f"hallo/{name}", format="mp4", codec="h264")
    graph.write(name)


def main() -> None:
    for stale in API.glob("*.json"):
        stale.unlink()
    portrait_to_video("hallo3_portrait_to_video", "hallo3", prompt="A person talking to the camera")
    long_video("hallo3_long_video_segments", "hallo3", upscale=False,
               prompts=("A person talking to the camera in a bright studio",
                        "A person talking to the camera at sunset on a beach"))
    long_video("hallo3_long_video_4k", "hallo3", upscale=True,
               prompts=("A person talking to the camera in a bright studio",
                        "A person talking to the camera at sunset on a beach"))
    portrait_to_video("hallo2_portrait_to_video", "hallo2")
    long_video("hallo2_long_video_4k", "hallo2", upscale=True)
    portrait_to_video("hallo_expression_control", "hallo", pose=0.5, expression=1.0, lip=1.5)
    for path in sorted(API.glob("*.json")):
        print(f"wrote {path.relative_to(API.parents[1])}")


if __name__ == "__main__":
    main()
