"""ComfyUI entry point of the Hallo node pack (V3 API): the nodes live in `nodes/`, the engine in `hallo_core/`."""

import importlib.util

WEB_DIRECTORY = "./web"

# Outside ComfyUI (tests, tools that import the repository as a package) there are no nodes to register.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
