"""The pack's custom ComfyUI types: only what has no core type (IMAGE, AUDIO, VIDEO and MASK are used wherever
possible)."""

from comfy_api.v0_0_2 import io

HalloModelType = io.Custom("HALLO_MODEL")  # a backbone with its models and engine options, from LoadHalloModel
HalloAudioType = io.Custom("HALLO_AUDIO")  # wav2vec2 features + the original audio
HalloIdentityType = io.Custom("HALLO_IDENTITY")  # face embedding, references, prompt
HalloMotionType = io.Custom("HALLO_MOTION")  # how a segment continues the previous one

CATEGORY = "Hallo"


class HalloIdentity:
    """HALLO_IDENTITY: the prepared portrait and the prompt that goes with it."""

    def __init__(self, conditioning, prompt: str, image_size: tuple[int, int]):
        self.conditioning = conditioning  # the backbone's prepared portrait (hallo_core ... IdentityConditioning)
        self.prompt = prompt
        self.image_size = image_size  # (height, width) of the input image


class HalloMotion:
    """HALLO_MOTION: where a segment starts and how its motion frames are treated.

    `continuation` is the previous segment's exact state (a denoise node's 'continuation' output), approximate frames
    from an IMAGE (`exact` False), or None: start from the portrait. `overrides` are the motion-frame options that
    differ from the model's official ones (a denoise node hands on all of its own, which the next segment must keep
    to continue as one render would).
    """

    def __init__(self, overrides: dict | None = None, continuation=None, exact: bool = False):
        self.overrides = dict(overrides or {})
        self.continuation = continuation  # hallo_core.render.backbone.Continuation or None
        self.exact = exact
