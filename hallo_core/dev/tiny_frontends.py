"""Tiny random-weight front-end models in the official on-disk formats, for smoke tests without the real weights.

Every writer is deterministic (weights from numpy generators seeded per tensor name), so a test can predict what the
models compute and golden numbers stay valid across runs and library versions.

| writer | writes | what the tiny model is |
| --- | --- | --- |
| `write_tiny_wav2vec(dir)` | `config.json`, `model.safetensors` (Wav2Vec2ForCTC keys with the `wav2vec2.` prefix, `weight_g`/`weight_v` positional conv, an `lm_head`), `preprocessor_config.json`, as facebook/wav2vec2-base-960h has | the base-960h architecture (group-norm CNN with the real kernels and strides, so 320 samples per CNN frame; post-norm transformer) with all **12** layers but width 32: features are (frames, 12, 32), so a tiny Hallo3 `audio_proj` takes 5 x 12 x 32 = 1920 inputs |
| `write_tiny_t5(dir)` | `config.json`, `model-0000{1,2}-of-00002.safetensors` + index, `spiece.model` (a small sentencepiece unigram model built here), `tokenizer_config.json`, `special_tokens_map.json`, as the official `t5-v1_1-xxl` folder | a 2-layer T5 v1.1 encoder (gated-GELU, d_model 32) with a 300-token embedding table (the tokenizer uses fewer ids plus 100 `<extra_id_N>`); embeddings are (1, 226, 32) |
| `write_tiny_face_models(dir)` | `scrfd_10g_bnkps.onnx`, `glintr100.onnx`, `1k3d68.onnx`, the antelopev2 names, built with onnx.helper | insightface 0.7.3 loads them as its SCRFD detector, ArcFace recogniser and 68-point 3-D landmark model; see the function for what they output |
| `write_tiny_vocal_separator(path)` | an ONNX file with Kim_Vocal_2's signature (`input`/`output`, [batch, 4, 3072, 256]) | a fixed separable gain on the spectrogram (per frequency bin times per time frame), so chunk alignment matters |
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# wav2vec2


TINY_WAV2VEC_CONFIG = {
    "architectures": ["Wav2Vec2ForCTC"],
    "model_type": "wav2vec2",
    "activation_dropout": 0.1,
    "apply_spec_augment": True,
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "conv_bias": False,
    "conv_dim": [16, 16, 16, 16, 16, 16, 16],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "sum",
    "ctc_zero_infinity": False,
    "do_stable_layer_norm": False,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "group",
    "feat_proj_dropout": 0.1,
    "final_dropout": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.1,
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "num_attention_heads": 2,
    "num_conv_pos_embedding_groups": 4,
    "num_conv_pos_embeddings": 16,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "vocab_size": 32,
}

WAV2VEC_PREPROCESSOR_CONFIG = {  # facebook/wav2vec2-base-960h, verbatim values
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic float32 values for one named tensor: norms near 1, biases small, weights ~ 1/sqrt(fan_in)."""
    g = _rng(name, seed)
    leaf = name.rsplit(".", 1)[-1]
    is_norm = any(t in name for t in ("layer_norm", "layernorm", "final_layer_norm")) or name.endswith(
        "conv_layers.0.layer_norm.weight")
    if leaf == "bias":
        return (0.05 * g.standard_normal(shape)).astype(np.float32)
    if is_norm and len(shape) == 1:
        return (1.0 + 0.1 * g.standard_normal(shape)).astype(np.float32)
    if leaf == "weight_g":
        return (1.0 + 0.1 * np.abs(g.standard_normal(shape))).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    return (g.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)


def _legacy_wav2vec_name(name: str) -> str:
    """The key names wav2vec2-base-960h's file uses (torch's old weight_norm, pre-parametrizations)."""
    return (name.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"))


def write_tiny_wav2vec(model_dir: str | os.PathLike, *, seed: int = 0) -> str:
    """Write a tiny wav2vec2-base-960h look-alike (12 layers, width 32) into `model_dir`; returns the folder."""
    import torch
    from safetensors.numpy import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    model_dir = os.fspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    with torch.device("meta"):  # shapes only
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY_WAV2VEC_CONFIG))
    tensors = {}
    for name, value in model.state_dict().items():
        legacy = _legacy_wav2vec_name(name)
        tensors[legacy] = _random_tensor(legacy, tuple(value.shape), seed)
    save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(model_dir, "config.json"), TINY_WAV2VEC_CONFIG)
    _write_json(os.path.join(model_dir, "preprocessor_config.json"), WAV2VEC_PREPROCESSOR_CONFIG)
    return model_dir


# ----------------------------------------------------------------------------------------------------------------
# T5


TINY_T5_CONFIG = {
    "architectures": ["T5EncoderModel"],
    "model_type": "t5",
    "d_ff": 64,
    "d_kv": 8,
    "d_model": 32,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "num_layers": 2,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": 300,
}

_CORPUS = """\
A little girl talking around a campfire at night, her face lit by warm orange light.
A woman talking on a dimly lit beach with the waves of the sea behind her.
An older man with messy hair is on vacation at the beach, posting selfie videos to show his friends the turquoise sea.
A young man speaks to the camera in a quiet office with soft daylight from the window.
The presenter smiles, nods and explains the results of the experiment in a calm voice.
A singer performs on a small stage while the audience listens in the dark hall.
Two friends laugh and talk about their holiday plans in a sunny kitchen.
The teacher describes the history of the old city, its bridges, towers and narrow streets.
A reporter stands in the rain and talks about the storm that reached the coast this morning.
She reads a short poem aloud, pausing at every line, her eyes moving across the page.
He tells a funny story about his dog, a cat, and a very confused mail carrier.
The scientist talks about stars, planets and the long journey of light through space.
A child asks many questions, and her grandmother answers each one with patience.
In the studio, the host welcomes the guest and asks about the new book.
The wind moves the trees in the park while a man speaks on the phone.
A calm portrait of a person talking, natural skin, detailed hair, soft shadows, high quality video.
"""


def tiny_sentencepiece_model() -> bytes:
    """A small sentencepiece unigram model with T5's conventions (pad 0, eos 1, unk 2, no bos, "▁" word marks).

    Built directly, not trained: the pieces are the characters of `_CORPUS` and its most frequent 2-5 character
    substrings ("▁" marks a word start), scored by log frequency (nudged so no two segmentations tie). The file is
    the same with every sentencepiece version; a trained model changes with the trainer.
    """
    import math
    from collections import Counter

    from sentencepiece import sentencepiece_model_pb2 as pb

    text = " ".join(_CORPUS.split())
    marked = ["\u2581" + w for w in text.split()]
    counts: Counter = Counter()
    for word in marked:  # every substring of 2-5 characters of every word, word start included
        counts.update(word[i:j] for i in range(len(word)) for j in range(i + 2, min(len(word), i + 5) + 1))
    chars = Counter("".join(marked))
    common = sorted(((p, n) for p, n in counts.items() if n >= 4 and p != "\u2581"), key=lambda kv: (-kv[1], kv[0]))
    pieces = common[:200 - len(chars)] + sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(n for _, n in pieces)
    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = 3 + len(pieces)
    model.trainer_spec.pad_id, model.trainer_spec.eos_id, model.trainer_spec.unk_id = 0, 1, 2
    model.trainer_spec.bos_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    for piece, kind in (("<pad>", pb.ModelProto.SentencePiece.CONTROL), ("</s>", pb.ModelProto.SentencePiece.CONTROL),
                        ("<unk>", pb.ModelProto.SentencePiece.UNKNOWN)):
        model.pieces.add(piece=piece, score=0.0, type=kind)
    for rank, (piece, count) in enumerate(pieces):
        # the sqrt term breaks exact ties between segmentations, which sentencepiece versions resolve differently
        score = math.log(count / total) - 1e-3 * math.sqrt(rank + 1)
        model.pieces.add(piece=piece, score=score, type=pb.ModelProto.SentencePiece.NORMAL)
    return model.SerializeToString()


def write_tiny_t5(model_dir: str | os.PathLike, *, seed: int = 0) -> str:
    """Write a tiny T5 v1.1 encoder with a real sentencepiece tokenizer in the `t5-v1_1-xxl` folder layout."""
    import torch
    from safetensors.numpy import save_file
    from transformers import T5Config, T5EncoderModel

    model_dir = os.fspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "spiece.model"), "wb") as f:
        f.write(tiny_sentencepiece_model())
    extra = [f"<extra_id_{i}>" for i in range(100)]
    _write_json(os.path.join(model_dir, "special_tokens_map.json"),
                {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "additional_special_tokens": extra})
    _write_json(os.path.join(model_dir, "tokenizer_config.json"),
                {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 100,
                 "additional_special_tokens": extra, "model_max_length": 512, "tokenizer_class": "T5Tokenizer"})

    # weights: an encoder-only state dict split over two shards with an index, like the official download
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**TINY_T5_CONFIG))
    names = [n for n in model.state_dict() if n != "encoder.embed_tokens.weight"]  # tied to shared.weight
    tensors = {n: _random_tensor(n, tuple(model.state_dict()[n].shape), seed) for n in names}
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, os.path.join(model_dir, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = int(sum(t.nbytes for t in tensors.values()))
    _write_json(os.path.join(model_dir, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(os.path.join(model_dir, "config.json"), TINY_T5_CONFIG)
    return model_dir


# ----------------------------------------------------------------------------------------------------------------
# face models (insightface antelopev2 names)

TINY_DET_SIZE = 640  # the tiny detector's fixed outputs are laid out for insightface's default det_size (640, 640)
_STRIDES = (8, 16, 32)

# One face in detector-input pixels (the image letterboxed into 640x640): anchor centre on the stride-32 grid,
# box size, score. Centre (320, 224) and 192x256 put it where the portraits' faces are.
DEFAULT_TINY_FACES = ({"center": (320, 224), "size": (192, 256), "score": 0.92},)

# ArcFace's 5-point template in a 112x112 crop (left eye, right eye, nose, left and right mouth corners)
_KPS_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                          [70.7299, 92.2041]], dtype=np.float32) / 112.0


def tiny_face_boxes(faces=DEFAULT_TINY_FACES) -> list[dict]:
    """What the tiny detector reports per face, in detector-input pixels: bbox (x0, y0, x1, y1), kps (5, 2), score."""
    out = []
    for face in faces:
        cx, cy = face["center"]
        w, h = face["size"]
        if cx % 32 or cy % 32:
            raise ValueError(f"tiny face centre {face['center']} must lie on the stride-32 anchor grid")
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)
        kps = box[:2] + _KPS_TEMPLATE * np.array([w, h], dtype=np.float32)
        out.append({"bbox": box, "kps": kps.astype(np.float32), "score": float(face["score"])})
    return out


def tiny_landmarks_68() -> np.ndarray:
    """The tiny landmark model's constant output: an iBUG-68 face, (68, 3), in units of 0.75*max(box w, h) about the
    detection box centre (insightface maps its crop back that way). Jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
    mouth 48-67; z bulges towards the nose."""
    pts = []
    for k in range(17):  # jaw: a half-ellipse from ear to ear through the chin
        phi = np.pi * k / 16
        pts.append((-0.5 * np.cos(phi), -0.12 + 0.72 * np.sin(phi)))
    for side in (-1, 1):  # brows (left brow first in image order)
        xs = np.linspace(-0.42, -0.08, 5) if side < 0 else np.linspace(0.08, 0.42, 5)
        for x in xs:
            pts.append((x, -0.33 - 0.05 * np.cos((abs(x) - 0.25) * 6)))
    pts += [(0.0, y) for y in np.linspace(-0.22, 0.08, 4)]  # nose bridge
    pts += [(x, 0.15) for x in np.linspace(-0.1, 0.1, 5)]  # nose bottom
    for cx in (-0.24, 0.24):  # eyes
        for a in np.linspace(0, 2 * np.pi, 6, endpoint=False):
            pts.append((cx - 0.09 * np.cos(a), -0.15 - 0.035 * np.sin(a)))
    for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):  # outer lips
        pts.append((-0.2 * np.cos(a), 0.36 - 0.08 * np.sin(a)))
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):  # inner lips
        pts.append((-0.13 * np.cos(a), 0.36 - 0.03 * np.sin(a)))
    xy = np.array(pts, dtype=np.float32)
    z = 0.35 * (1 - (xy[:, 0] / 0.6) ** 2 - (xy[:, 1] / 0.9) ** 2)
    z[27:36] += 0.15
    return np.concatenate([xy, z[:, None].astype(np.float32)], axis=1)


def write_tiny_face_models(model_dir: str | os.PathLike, *, faces=DEFAULT_TINY_FACES, seed: int = 0) -> str:
    """Write tiny antelopev2 stand-ins that insightface 0.7.3 loads and runs; returns the folder.

    * `scrfd_10g_bnkps.onnx`: SCRFD outputs (scores, distances, key points for strides 8/16/32, 2 anchors). The
      detections are fixed (`faces`, see `tiny_face_boxes`) but only reported when the image is not a flat colour, so a
      blank image has no face. Laid out for det_size 640x640.
    * `glintr100.onnx`: 112x112 aligned crop -> 4x4 average pool -> a fixed random 48x512 linear map: a raw 512-d
      embedding that depends on the crop's pixels.
    * `1k3d68.onnx`: 192x192 crop -> the constant 68-point face of `tiny_landmarks_68` (plus the 1035 leading points of
      the real model's 3309 outputs, zero).
    """
    model_dir = os.fspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    _save_onnx(_tiny_detector(faces), os.path.join(model_dir, "scrfd_10g_bnkps.onnx"))
    _save_onnx(_tiny_recognizer(seed), os.path.join(model_dir, "glintr100.onnx"))
    _save_onnx(_tiny_landmarker(), os.path.join(model_dir, "1k3d68.onnx"))
    return model_dir


def _save_onnx(model, path: str) -> None:
    import onnx

    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _const(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _tiny_detector(faces):
    from onnx import TensorProto, helper

    boxes = tiny_face_boxes(faces)
    nodes, inits, outputs = [], [], []
    # gate = 1 if the image has any contrast, else 0
    nodes += [helper.make_node("ReduceMax", ["input.1"], ["vmax"], keepdims=0, name="gate_max"),
              helper.make_node("ReduceMin", ["input.1"], ["vmin"], keepdims=0, name="gate_min"),
              helper.make_node("Sub", ["vmax", "vmin"], ["range"], name="gate_range"),
              helper.make_node("Greater", ["range", "min_range"], ["has_content"], name="gate_cmp"),
              helper.make_node("Cast", ["has_content"], ["gate"], to=TensorProto.FLOAT, name="gate_cast")]
    inits.append(_const("min_range", np.array(0.1, dtype=np.float32)))
    per_stride = {}
    for stride in _STRIDES:
        side = TINY_DET_SIZE // stride
        rows = side * side * 2
        score = np.zeros((rows, 1), np.float32)
        dist = np.zeros((rows, 4), np.float32)
        kps = np.zeros((rows, 10), np.float32)
        if stride == 32:
            for b in boxes:
                cx, cy = (b["bbox"][0] + b["bbox"][2]) / 2, (b["bbox"][1] + b["bbox"][3]) / 2
                row = (int(cy) // stride * side + int(cx) // stride) * 2  # first of the cell's two anchors
                score[row] = b["score"]
                x0, y0, x1, y1 = b["bbox"]
                dist[row] = np.array([cx - x0, cy - y0, x1 - cx, y1 - cy]) / stride
                kps[row] = ((b["kps"] - np.array([cx, cy], np.float32)) / stride).reshape(-1)
        per_stride[stride] = (score, dist, kps)
    for kind, column in (("score", 0), ("bbox", 1), ("kps", 2)):
        for stride in _STRIDES:
            name = f"{kind}_{stride}"
            table = per_stride[stride][column]
            if not table.any():  # all-zero outputs are generated, keeping the file small
                inits.append(_const(f"{name}_shape", np.array(table.shape, dtype=np.int64)))
                nodes.append(helper.make_node("ConstantOfShape", [f"{name}_shape"], [name], name=f"{name}_zeros",
                                              value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])))
            elif kind == "score":
                inits.append(_const(f"{name}_table", table))
                nodes.append(helper.make_node("Mul", [f"{name}_table", "gate"], [name], name=f"{name}_gate"))
            else:
                inits.append(_const(f"{name}_table", table))
                nodes.append(helper.make_node("Identity", [f"{name}_table"], [name], name=f"{name}_out"))
            width = per_stride[stride][column].shape
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(width)))
    graph = helper.make_graph(nodes, "tiny_scrfd",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hallo_core.tiny")


def _tiny_recognizer(seed: int):
    from onnx import TensorProto, helper

    g = _rng("glintr100.fc", seed)
    weight = (g.standard_normal((48, 512)) * 2.0).astype(np.float32)
    bias = (g.standard_normal(512) * 0.5).astype(np.float32)
    nodes = [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[28, 28], strides=[28, 28],
                              name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"], name="fc")]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])],
                              [_const("fc_w", weight), _const("fc_b", bias)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hallo_core.tiny")


def _tiny_landmarker():
    from onnx import TensorProto, helper

    out = np.zeros((1, 3309), np.float32)
    # insightface maps an output p to crop pixels (p + 1) * 96 of a 192 px crop spanning 1.5 * max(w, h) about the box
    # centre, i.e. to centre + p * 0.75 * max(w, h): the template's own units, so it is the output unchanged
    out[0, -68 * 3:] = tiny_landmarks_68().reshape(-1)
    nodes = [helper.make_node("ReduceMean", ["data"], ["m"], keepdims=0, name="touch_input"),
             helper.make_node("Mul", ["m", "zero"], ["m0"], name="zero_input"),
             helper.make_node("Add", ["points", "m0"], ["fc1"], name="points_out")]
    graph = helper.make_graph(nodes, "tiny_1k3d68",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3309])],
                              [_const("points", out), _const("zero", np.array(0.0, np.float32))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hallo_core.tiny")


# ----------------------------------------------------------------------------------------------------------------
# vocal separator (MDX-Net Kim_Vocal_2 signature)


def tiny_separator_gains(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The tiny separator's gains: per frequency bin (3072,) and per time frame (256,), both in [0.2, 1]."""
    g = _rng("separator", seed)
    return (0.2 + 0.8 * g.random(3072)).astype(np.float32), (0.2 + 0.8 * g.random(256)).astype(np.float32)


def write_tiny_vocal_separator(path: str | os.PathLike, *, seed: int = 0) -> str:
    """Write a tiny ONNX with Kim_Vocal_2's input/output signature: output = input * gain_f[f] * gain_t[t]."""
    from onnx import TensorProto, helper

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    gain_f, gain_t = tiny_separator_gains(seed)
    nodes = [helper.make_node("Mul", ["input", "gain_f"], ["by_bin"], name="bin_gain"),  # broadcast over batch,
             helper.make_node("Mul", ["by_bin", "gain_t"], ["output"], name="frame_gain")]  # channels and time
    shape = ["batch_size", 4, 3072, 256]
    graph = helper.make_graph(nodes, "tiny_mdx", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
                              [_const("gain_f", gain_f[:, None]), _const("gain_t", gain_t[None, :])])
    _save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hallo_core.tiny"),
               path)
    return path


def _write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
