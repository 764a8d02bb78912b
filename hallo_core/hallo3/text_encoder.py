"""The prompt embedding: T5 v1.1 XXL encoder as Hallo3's `FrozenT5Embedder` runs it (hallo3
`sgm/modules/encoders/modules.py:235-279`, spec section 4.3).

* transformers `T5Tokenizer` and `T5EncoderModel` from the official `t5-v1_1-xxl` folder (`config.json`, sharded
  safetensors, `spiece.model`, tokenizer configs);
* `max_length=226`, `padding="max_length"`, `truncation=True`; the input ids only, **no attention mask**, so the
  padding tokens take part in attention as they do officially; `last_hidden_state` (1, 226, 4096);
* the unconditional embedding is all zeros (`force_uc_zero_embeddings=["txt"]`), not the encoding of "";
* the official engine runs T5 in bf16 (the whole SAT engine is cast); that is the default dtype here.

Embeddings are cached by prompt, so each prompt is encoded once per session (a long render re-uses them per clip).
"""

from __future__ import annotations

import glob
import os
from collections import OrderedDict

import torch
from safetensors import SafetensorError

from ..errors import ModelFileError
from ..loading.quiet import quiet_transformers

MAX_LENGTH = 226
_WHERE = "download t5-v1_1-xxl (hallo3 pretrained_models/t5-v1_1-xxl/: config.json, *.safetensors, spiece.model)"


class T5TextEncoder:
    """A transformers T5 encoder + tokenizer; `encode(prompt)` -> (1, 226, d_model), cached; `uncond()` -> zeros."""

    def __init__(self, model, tokenizer, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                 max_length: int = MAX_LENGTH, cache_size: int = 16):
        self.model = model.eval().to(device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    def token_ids(self, prompt: str) -> torch.Tensor:
        """(1, max_length) int64 ids: truncated to max_length (ending with </s>) and padded with <pad> (id 0)."""
        batch = self.tokenizer([prompt], truncation=True, max_length=self.max_length, padding="max_length",
                               return_tensors="pt")
        return batch["input_ids"]

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """(1, max_length, d_model) on the encoder's device and dtype; do not modify the returned tensor in place."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        ids = self.token_ids(prompt).to(self.device)
        embedding = self.model(input_ids=ids).last_hidden_state  # no attention mask, as official
        self._cache[prompt] = embedding
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embedding

    def uncond(self) -> torch.Tensor:
        """The unconditional text embedding: zeros (1, max_length, d_model)."""
        return torch.zeros(1, self.max_length, self.hidden_size, device=self.device, dtype=self.dtype)

    def clear_cache(self) -> None:
        self._cache.clear()

    def to(self, device: str | torch.device) -> "T5TextEncoder":
        self.model.to(device)
        self.device = torch.device(device)
        self._cache = OrderedDict((k, v.to(device)) for k, v in self._cache.items())
        return self


def load_text_encoder(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.bfloat16, max_length: int = MAX_LENGTH,
                      attn_implementation: str = "eager") -> T5TextEncoder:
    """Load the T5 encoder and tokenizer from an official `t5-v1_1-xxl` folder (weights as safetensors only).

    `attn_implementation="eager"` is what transformers 4.45 (the official version) runs for T5 and matches it bit for
    bit; "sdpa" is faster and differs at float rounding level (2e-5 on the tiny random model in fp32).
    """
    import transformers
    from transformers import T5EncoderModel, T5Tokenizer

    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ModelFileError(f"T5 folder not found: {model_dir}; {_WHERE}")
    for name in ("config.json", "spiece.model"):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise ModelFileError(f"{name} missing in {model_dir}; {_WHERE}")
    if not glob.glob(os.path.join(model_dir, "*.safetensors")):
        raise ModelFileError(f"no .safetensors weights in {model_dir}; {_WHERE}")
    dtype_kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
    try:
        with quiet_transformers():
            tokenizer = T5Tokenizer.from_pretrained(model_dir, local_files_only=True, legacy=True)
            model, info = T5EncoderModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                         output_loading_info=True,
                                                         attn_implementation=attn_implementation, **dtype_kw)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelFileError(f"{model_dir}: cannot load the T5 encoder ({' '.join(str(exc).split())[:200]}); "
                             f"{_WHERE}") from None
    missing = sorted(info.get("missing_keys", ()))
    if missing or info.get("mismatched_keys"):
        bad = missing[:3] or [str(k) for k in list(info["mismatched_keys"])[:3]]
        raise ModelFileError(f"{model_dir}: the weights do not match the T5 config (e.g. {', '.join(bad)}); {_WHERE}")
    return T5TextEncoder(model, tokenizer, device=device, dtype=dtype, max_length=max_length)
