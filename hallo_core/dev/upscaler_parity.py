"""`parity` for the upscaler network: our `TemporalCodeFormer` against numbers recorded from the official CodeFormer
class of Hallo2.

A golden is three files:

* a JSON description: `"model": "hallo2_vq_upscaler"`, its `"config"` (official constructor names: dim_embd, n_head,
  n_layers, codebook_size, connect_list; `nf` when the convolutions are narrower than the official 64) and `"ws"`, the
  fidelity weights that were run;
* weights with the official key names (`net_g.pth`-style `.pth` or safetensors), loaded by the real loader;
* an io safetensors file: `inputs.x` (B, F, 3, 512, 512) in [-1, 1]; `outputs.forward.w{w}.out` for each w (the
  official `forward(x, w, adain=True)[0]`); `outputs.top1_minus_top2_logit` (B, F, 256), the golden's margin between
  its two best code logits per token; optionally `outputs.codes` (B, F, 256), the golden's chosen codes.

Argmax ties. A token whose golden margin is below 1e-4 may legitimately pick the other code in another implementation
(or on another device), and a different code changes every pixel of that frame: the decoder's 16x16 self-attention
and AdaIN's per-frame statistics mix all tokens of a frame, while frames never mix in the decoder. So:

1. Tokens are compared by code. With `outputs.codes` in the golden, a token whose code differs from the golden's is
   a *tie flip* when its golden margin is below 1e-4 and a *code mismatch* (a failure) otherwise.
2. Tie flips are not excluded but resolved: the frame is decoded again with the golden's code at the flipped tokens
   (our codes everywhere else), so every pixel is still compared at 1e-4. The decoder is exactly the one under test.
3. Without `outputs.codes` the flips cannot be seen directly. A frame that misses the tolerance and holds ambiguous
   tokens (golden margin < 1e-4) is decoded again with our second-best code at each non-empty subset of them (at most
   4 tokens, 15 decodes); if one matches, those were tie flips. If none does, or there are more than 4, the frame is
   *excluded* from the comparison (its code agreement is unknown) and listed; `ok` then needs at least one frame
   compared.

`ok` = no code mismatch, every compared output within 1e-4, and our top-1/top-2 margins within 1e-4 of the golden's.

Report (one JSON object): `model`, `ok`, `tolerance`; `max_abs_diff` per output key (and for the margins);
`tokens`; `ambiguous_tokens` (golden margin < 1e-4); `code_mismatches`; `tie_flips` (tokens decoded with the other
code of a tie); `excluded_frames` per output key as [b, f] pairs; `frames_compared` (frames, summed over the ws);
`config` (the sizes used); `device`.
"""

from __future__ import annotations

import itertools

import torch

from ..errors import InputError
from ..upscaler.temporal_codeformer import EncodedClip
from ..upscaler.weights import load_temporal_codeformer
from .golden_files import read_golden_description, read_golden_tensors

MODEL_NAME = "hallo2_vq_upscaler"
TOLERANCE = 1e-4
TIE_MARGIN = 1e-4
MAX_TIE_SEARCH = 4


def _read_json(path: str) -> dict:
    description = read_golden_description(path)
    if description.get("model") != MODEL_NAME:
        raise InputError(f"{path}: 'model' is {description.get('model')!r}, expected {MODEL_NAME!r}")
    return description


def _output_key(io: dict, w) -> str:
    """`outputs.forward.w{w}.out`, whichever way the golden spelled the number (0, 0.0, 0.5, 1, 1.0)."""
    value = float(w)
    spellings = [str(w), repr(value), f"{value:g}"] + ([str(int(value))] if value.is_integer() else [])
    for spelling in spellings:
        key = f"outputs.forward.w{spelling}.out"
        if key in io:
            return key
    raise InputError(f"golden io has no outputs.forward.w{w}.out for w={w} listed in 'ws'")


def _ws(description: dict, io: dict) -> list:
    if "ws" in description:
        return list(description["ws"])
    found = sorted(k[len("outputs.forward.w"):-len(".out")] for k in io
                   if k.startswith("outputs.forward.w") and k.endswith(".out"))
    if not found:
        raise InputError("golden has no 'ws' and no outputs.forward.w{w}.out tensors")
    return [float(s) for s in found]


def _frame(encoded: EncodedClip, index: int) -> EncodedClip:
    """The encoder results of one frame, as a (1, 1) clip (the decoder never mixes frames)."""
    return EncodedClip(lq_feat=encoded.lq_feat[index:index + 1],
                       taps={k: v[index:index + 1] for k, v in encoded.taps.items()}, batch=1, frames=1)


def _search_tie_break(model, encoded: EncodedClip, index: int, codes: torch.Tensor, ranked: torch.Tensor,
                      ambiguous: torch.Tensor, golden: torch.Tensor, w) -> torch.Tensor | None:
    """Our codes of frame `index` with the runner-up code at some ambiguous tokens, if that reproduces the golden."""
    candidates = ambiguous.nonzero().flatten().tolist()
    if len(candidates) > MAX_TIE_SEARCH:
        return None
    one = _frame(encoded, index)
    for count in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, count):
            trial = codes[index].clone()
            trial[list(subset)] = ranked[index, list(subset), 1]
            if (model.decode(trial[None], one, float(w))[0, 0] - golden).abs().max() <= TOLERANCE:
                return trial
    return None


@torch.inference_mode()
def run_upscaler_parity(weights_path: str, io_path: str, config_path: str, device: str = "cpu") -> dict:
    """Compare the network with an official-code golden; returns the report (see the module docstring)."""
    description = _read_json(config_path)
    io = read_golden_tensors(io_path)
    if "inputs.x" not in io:
        raise InputError(f"{io_path}: no inputs.x tensor")
    model = load_temporal_codeformer(weights_path, config=description.get("config"), device=device,
                                     dtype=torch.float32)
    x = io["inputs.x"].to(device=device, dtype=torch.float32)
    if x.dim() != 5:
        raise InputError(f"{io_path}: inputs.x must be (B, F, 3, H, W), got {tuple(x.shape)}")
    b, f = x.shape[:2]

    encoded = model.encode(x)
    logits = model.predict_logits(encoded)  # (B*F, 256, K)
    top2 = logits.topk(2, dim=-1)
    codes = top2.indices[..., 0]
    margin = top2.values[..., 0] - top2.values[..., 1]
    tokens = codes.shape[-1]

    diffs: dict[str, float] = {}
    golden_margin = io.get("outputs.top1_minus_top2_logit")
    if golden_margin is not None:
        golden_margin = golden_margin.to(device, torch.float32).reshape(b * f, tokens)
        diffs["outputs.top1_minus_top2_logit"] = float((margin - golden_margin).abs().max())
        ambiguous = golden_margin < TIE_MARGIN
    else:
        ambiguous = margin < TIE_MARGIN
    golden_codes = io.get("outputs.codes")
    code_mismatches = tie_flips = 0
    decode_codes = codes
    if golden_codes is not None:
        golden_codes = golden_codes.to(device, torch.long).reshape(b * f, tokens)
        differ = codes != golden_codes
        code_mismatches = int((differ & ~ambiguous).sum())
        flipped = differ & ambiguous
        tie_flips = int(flipped.sum())
        decode_codes = torch.where(flipped, golden_codes, codes)

    excluded: dict[str, list[list[int]]] = {}
    searched: set[int] = set()
    compared_frames = 0
    for w in _ws(description, io):
        key = _output_key(io, w)
        golden = io[key].to(device, torch.float32).reshape(b * f, *x.shape[2:])
        out = model.decode(decode_codes, encoded, float(w)).reshape(b * f, *x.shape[2:])
        frame_diff = (out - golden).abs().flatten(1).amax(1)
        skipped = []
        for index in range(b * f):
            if golden_codes is not None or frame_diff[index] <= TOLERANCE or not ambiguous[index].any():
                continue
            if index not in searched:  # once per frame; the tie-break found holds for every w
                searched.add(index)
                flips = _search_tie_break(model, encoded, index, codes, top2.indices, ambiguous[index],
                                          golden[index], w)
                if flips is not None:
                    decode_codes = decode_codes.clone()
                    decode_codes[index] = flips
                    tie_flips += int((flips != codes[index]).sum())
            one = _frame(encoded, index)
            diff = (model.decode(decode_codes[index][None], one, float(w))[0, 0] - golden[index]).abs().max()
            if diff <= TOLERANCE:
                frame_diff[index] = diff
            else:
                skipped.append(index)
        keep = torch.ones(b * f, dtype=torch.bool, device=frame_diff.device)
        keep[skipped] = False
        if skipped:
            excluded[key] = [[i // f, i % f] for i in skipped]
        compared_frames += int(keep.sum())
        diffs[key] = float(frame_diff[keep].max()) if keep.any() else None

    ok = (code_mismatches == 0 and compared_frames > 0
          and all(value is not None and value <= TOLERANCE for value in diffs.values()))
    return {
        "model": MODEL_NAME,
        "ok": bool(ok),
        "tolerance": TOLERANCE,
        "max_abs_diff": diffs,
        "tokens": int(codes.numel()),
        "ambiguous_tokens": int(ambiguous.sum()),
        "code_mismatches": code_mismatches,
        "tie_flips": tie_flips,
        "excluded_frames": excluded,
        "frames_compared": compared_frames,
        "config": model.config.to_dict(),
        "device": str(device),
    }
