"""Model configurations stored as JSON in the metadata of the files `convert` and `make-tiny-models` write.

A dataclass config inherits `StoredConfig` to gain `to_json` / `from_json`; reading keeps the fields the class knows,
so a file written by an older or newer version (one more or one fewer field) still loads, with defaults for the rest.
"""

from __future__ import annotations

import dataclasses
import json


class StoredConfig:
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
