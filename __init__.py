"""ComfyUI entry point of the Hallo node pack (V3 API): the nodes live in `nodes/`, the engine in `hallo_core/`."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
