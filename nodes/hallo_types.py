"""The pack's custom ComfyUI types: only what has no core type (IMAGE, AUDIO and VIDEO are used wherever possible)."""

from comfy_api.latest import io

HalloModelType = io.Custom("HALLO_MODEL")  # models and settings from LoadHalloModel
HalloAudioType = io.Custom("HALLO_AUDIO")  # wav2vec2 features + the original audio
HalloIdentityType = io.Custom("HALLO_IDENTITY")  # face embedding, references, prompt
HalloMotionType = io.Custom("HALLO_MOTION")  # how the next segment continues a previous one

CATEGORY = "Hallo"


class HalloIdentity:
    """HALLO_IDENTITY: the prepared portrait and the prompt that goes with it."""

    def __init__(self, conditioning, prompt: str, image_size: tuple[int, int]):
        self.conditioning = conditioning  # hallo_core.hallo3.pipeline.IdentityConditioning
        self.prompt = prompt
        self.image_size = image_size  # (height, width) of the input image


class HalloMotion:
    """HALLO_MOTION: motion-frame options and the frames a segment continues from (None: start from the portrait).

    `exact` is True when the frames are the previous segment's own decoded frames (found through the continuation
    index), so the segment continues exactly as a single render would.
    """

    def __init__(self, options, frames=None, exact: bool = False, end_frame: int | None = None):
        self.options = options  # hallo_core.render.motion.MotionOptions
        self.frames = frames  # (n, 3, H, W) float32 in [0, 1], or None
        self.exact = exact
        self.end_frame = end_frame  # output frame after the previous segment, when known
