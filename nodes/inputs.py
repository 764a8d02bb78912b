"""Choice inputs ComfyUI checks at queue time, one error per wrong value, naming the input.

ComfyUI checks a value against its list only for inputs whose type is the list itself (the legacy form); a V3
`COMBO` input is not checked in ComfyUI 0.3.64, and a node's own `validate_inputs` reports its one error once for every
input it takes. So our choices declare their list as their type: a name that is not in the model folders (a path
from another machine, `../` traversal) or a misspelt option is refused before anything runs, with ComfyUI's own
"Value not in list: <input>" message, once.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io


class _Choice(io.Combo.Input):
    def get_io_type(self):
        return list(self.options)


def choice_input(name: str, options: list[str], default: str | None = None, tooltip: str | None = None,
                 optional: bool = False) -> io.Combo.Input:
    return _Choice(name, options=options, default=default, tooltip=tooltip, optional=optional)


def model_combo(name: str, folder: str, options: list[str], tooltip: str) -> io.Combo.Input:
    """A choice of names inside a ComfyUI model folder; `model_folder` in its spec tells tools (workflow validators)
    that the choices are files of the installation."""
    combo = choice_input(name, options, tooltip=tooltip)
    combo.extra_dict = {**getattr(combo, "extra_dict", {}), "model_folder": folder}  # merged into /object_info
    return combo
