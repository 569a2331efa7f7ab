#!/usr/bin/env python3
"""Builds a small stand-in for the sherpa-onnx SenseVoice export, for the Rust tests.

Usage: make_sensevoice_model.py OUT_DIR

No real SenseVoice weights can be fetched on the build machines, so this script writes a model
with exactly the interface of `scripts/sense-voice/export-onnx.py` in k2-fsa/sherpa-onnx:

- inputs  `x` float32 [N, T, 560] (LFR + CMVN features), `x_length` int32 [N],
          `language` int32 [N], `text_norm` int32 [N];
- output  `logits` float32 [N, T + 4, vocab] (4 query positions, then one row per frame);
- custom metadata with the same keys and the same language / text-norm embedding ids as the
  real model (`lang_auto` 0, `lang_zh` 3, `lang_en` 4, ..., `with_itn` 14, `without_itn` 15),
  and non-trivial `neg_mean` / `inv_stddev` vectors of 560 values;
- `tokens.txt` with `<token> <id>` lines (id 0 `<unk>` is the CTC blank).

Its computation is small but real: every text token listens to one mel band. The graph undoes
the CMVN, and for each frame scores each text token by how much its band stands out of the
frame's mean log-mel energy (the blank has a constant score, so silence decodes to nothing).
The four query positions are scored from the utterance mean of those contrasts and from the
`language` / `text_norm` inputs: position 0 is the language tag (a forced language wins; `auto`
picks the tag of the token group that dominates), 1 the emotion, 2 the event, 3 the ITN tag.
Test audio made of tones at the band centres therefore decodes to known text and tags.

Besides the model it writes the test clips (`hello.wav`, `nihao.wav`), a noise clip with the
numpy reference of its front end (`noise.fbank.f32`, `noise.features.f32`: kaldi fbank, then
FunASR LFR, then CMVN, little-endian float32, row-major) and `reference.json` (shapes and the
expected decodes). The script checks the model with onnx's reference evaluator before it
returns, so a mismatch in the Rust tests points at the Rust side.

Needs only `onnx` (1.16 or newer, for its reference evaluator) and `numpy`; tested with onnx 1.23.2
and numpy 2.4.6.
"""

import json
import math
import os
import sys
import wave

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

SAMPLE_RATE = 16000
NUM_BINS = 80
LFR_M = 7
LFR_N = 6
FEAT_DIM = NUM_BINS * LFR_M

# Embedding ids of the real SenseVoiceSmall export (model.lid_dict / model.textnorm_dict).
LANG_IDS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
WITH_ITN = 14
WITHOUT_ITN = 15
NUM_QUERIES = 16  # rows of the query embedding table

# Text tokens and the mel band each one listens to (bands 6 apart, far from leaking into
# each other). The first three are the "English" group, the last three the "Chinese" group.
TEXT_TOKENS = [("▁he", 12), ("llo", 18), ("▁world", 24), ("你", 40), ("好", 46), ("。", 52)]
EN_GROUP = ["▁he", "llo", "▁world"]
ZH_GROUP = ["你", "好", "。"]
TAGS = [
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|EMO_UNKNOWN|>",
    "<|Speech|>", "<|BGM|>", "<|Event_UNK|>", "<|withitn|>", "<|woitn|>",
]
TOKENS = ["<unk>", "<s>", "</s>"] + [t for t, _ in TEXT_TOKENS] + TAGS
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
VOCAB = len(TOKENS)
BLANK_ID = 0

BLANK_SCORE = 4.0  # a frame needs a band this far above its mean to emit a token
DEFAULT_SCORE = 0.5  # the no-speech defaults of the query positions
OFF = -1000.0  # tokens a position never emits
FORCED = 1000.0  # a forced language / the chosen ITN tag


# ---------------------------------------------------------------------------------------------
# Front end in numpy (float64): kaldi fbank as sherpa-onnx configures it for SenseVoice
# (kaldi-native-fbank: 25 ms / 10 ms, hamming, dither 0, snip_edges, preemphasis 0.97, DC
# removal, power spectrum, 80 mel bins from 20 Hz to Nyquist, natural log floored at FLT_EPSILON),
# then FunASR's LFR (7 frames, shift 6, 3 copies of the first frame on the left, the last frame
# repeated on the right), then CMVN (x + neg_mean) * inv_stddev.
# ---------------------------------------------------------------------------------------------

FRAME_LEN = 400
FRAME_SHIFT = 160
FFT_LEN = 512
FLT_EPSILON = float(np.finfo(np.float32).eps)


def mel_scale(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_banks():
    """[NUM_BINS, FFT_LEN // 2] triangular weights (kaldi MelBanks, Nyquist bin excluded)."""
    low, high = 20.0, SAMPLE_RATE / 2.0
    mel_low, mel_high = mel_scale(low), mel_scale(high)
    delta = (mel_high - mel_low) / (NUM_BINS + 1)
    fft_mel = mel_scale(np.arange(FFT_LEN // 2) * (SAMPLE_RATE / FFT_LEN))
    banks = np.zeros((NUM_BINS, FFT_LEN // 2))
    for b in range(NUM_BINS):
        left = mel_low + b * delta
        center = left + delta
        right = center + delta
        up = (fft_mel > left) & (fft_mel <= center)
        down = (fft_mel > center) & (fft_mel < right)
        banks[b, up] = (fft_mel[up] - left) / (center - left)
        banks[b, down] = (right - fft_mel[down]) / (right - center)
    return banks


def band_centre_hz(band):
    mel_low, mel_high = mel_scale(20.0), mel_scale(SAMPLE_RATE / 2.0)
    delta = (mel_high - mel_low) / (NUM_BINS + 1)
    centre = mel_low + (band + 1) * delta
    return 700.0 * (math.exp(centre / 1127.0) - 1.0)


def fbank(samples):
    """Log-mel fbank of int16-range samples: [frames, NUM_BINS] float64."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < FRAME_LEN:
        return np.zeros((0, NUM_BINS))
    frames = 1 + (len(x) - FRAME_LEN) // FRAME_SHIFT
    idx = np.arange(FRAME_LEN)[None, :] + FRAME_SHIFT * np.arange(frames)[:, None]
    w = x[idx]
    w = w - w.mean(axis=1, keepdims=True)
    w = np.concatenate([w[:, :1] * (1.0 - 0.97), w[:, 1:] - 0.97 * w[:, :-1]], axis=1)
    n = np.arange(FRAME_LEN)
    w = w * (0.54 - 0.46 * np.cos(2.0 * math.pi * n / (FRAME_LEN - 1)))
    spec = np.fft.rfft(w, n=FFT_LEN, axis=1)
    power = spec.real**2 + spec.imag**2
    energies = power[:, : FFT_LEN // 2] @ mel_banks().T
    return np.log(np.maximum(energies, FLT_EPSILON))


def lfr(feats):
    """FunASR apply_lfr: [T, 80] -> [ceil(T / 6), 560]."""
    t = feats.shape[0]
    if t == 0:
        return np.zeros((0, FEAT_DIM))
    left = (LFR_M - 1) // 2
    padded = np.concatenate([np.repeat(feats[:1], left, axis=0), feats], axis=0)
    total = padded.shape[0]
    out = []
    for i in range(-(-t // LFR_N)):
        start = i * LFR_N
        window = padded[start : start + LFR_M]
        if window.shape[0] < LFR_M:
            window = np.concatenate([window, np.repeat(padded[total - 1 :], LFR_M - window.shape[0], axis=0)])
        out.append(window.reshape(-1))
    return np.stack(out)


def cmvn_vectors():
    d = np.arange(FEAT_DIM)
    neg_mean = -(9.0 + 3.0 * np.sin(0.05 * d) + 0.01 * (d % NUM_BINS))
    inv_stddev = 0.2 + 0.15 * (1.0 + np.cos(0.37 * d))
    # Printed with 6 decimals in the metadata: use exactly the printed values everywhere.
    neg_mean = np.array([float(f"{v:.6f}") for v in neg_mean])
    inv_stddev = np.array([float(f"{v:.6f}") for v in inv_stddev])
    return neg_mean, inv_stddev


def features(samples, neg_mean, inv_stddev):
    return (lfr(fbank(samples)) + neg_mean) * inv_stddev


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


def contrast_weights():
    """[FEAT_DIM, VOCAB] weights W such that raw_lfr_frame @ W gives, for each text token, the
    mean over the 7 stacked frames of (its band's log energy - the frame's mean log energy)."""
    w = np.zeros((FEAT_DIM, VOCAB))
    for token, band in TEXT_TOKENS:
        col = np.full(NUM_BINS, -1.0 / NUM_BINS)
        col[band] += 1.0
        w[:, TOKEN_ID[token]] = np.tile(col, LFR_M) / LFR_M
    return w


def group_weights(raw_w, groups):
    """[FEAT_DIM, VOCAB]: each output token in `groups` gets the mean contrast of its group."""
    w = np.zeros((FEAT_DIM, VOCAB))
    for out_token, members in groups.items():
        for m in members:
            w[:, TOKEN_ID[out_token]] += raw_w[:, TOKEN_ID[m]] / len(members)
    return w


def query_tables():
    """Parameters of the four query positions on the raw (un-normalised) pooled features."""
    raw = contrast_weights()
    # Position 0, language: `auto` lets the dominant token group decide.
    lang_w = group_weights(raw, {"<|en|>": EN_GROUP, "<|zh|>": ZH_GROUP})
    lang_b = np.full(VOCAB, OFF)
    lang_b[[TOKEN_ID["<|en|>"], TOKEN_ID["<|zh|>"]]] = 0.0
    lang_b[TOKEN_ID["<|nospeech|>"]] = DEFAULT_SCORE
    lang_table = np.zeros((NUM_QUERIES, VOCAB))
    for lang, emb in LANG_IDS.items():
        if lang != "auto":
            lang_table[emb, TOKEN_ID[f"<|{lang}|>"]] = 2 * FORCED
    # Position 1, emotion: the English group sounds happy, the Chinese one sad.
    emo_w = group_weights(raw, {"<|HAPPY|>": EN_GROUP, "<|SAD|>": ZH_GROUP})
    emo_b = np.full(VOCAB, OFF)
    emo_b[[TOKEN_ID["<|HAPPY|>"], TOKEN_ID["<|SAD|>"]]] = 0.0
    emo_b[TOKEN_ID["<|EMO_UNKNOWN|>"]] = DEFAULT_SCORE
    # Position 2, event: any band standing out is speech.
    event_w = group_weights(raw, {"<|Speech|>": EN_GROUP + ZH_GROUP})
    event_b = np.full(VOCAB, OFF)
    event_b[TOKEN_ID["<|Speech|>"]] = 0.0
    event_b[TOKEN_ID["<|Event_UNK|>"]] = DEFAULT_SCORE
    # Position 3, text normalisation: the tag of the requested mode.
    itn_table = np.full((NUM_QUERIES, VOCAB), OFF)
    itn_table[WITH_ITN, TOKEN_ID["<|withitn|>"]] = FORCED
    itn_table[WITHOUT_ITN, TOKEN_ID["<|woitn|>"]] = FORCED
    return [(lang_w, lang_b), (emo_w, emo_b), (event_w, event_b)], lang_table, itn_table


def fold_cmvn(raw_w, raw_b, neg_mean, inv_stddev):
    """Weights on normalised features x equivalent to `raw @ raw_w + raw_b`, where
    raw = x / inv_stddev - neg_mean undoes the CMVN."""
    return raw_w / inv_stddev[:, None], raw_b - neg_mean @ raw_w


def build_model(neg_mean, inv_stddev):
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    frame_b = np.full(VOCAB, OFF)
    frame_b[BLANK_ID] = BLANK_SCORE
    for token, _ in TEXT_TOKENS:
        frame_b[TOKEN_ID[token]] = 0.0
    frame_w, frame_b = fold_cmvn(contrast_weights(), frame_b, neg_mean, inv_stddev)
    queries, lang_table, itn_table = query_tables()
    folded = [fold_cmvn(w, b, neg_mean, inv_stddev) for w, b in queries]

    inits = [
        numpy_helper.from_array(f32(frame_w), "frame_w"),
        numpy_helper.from_array(f32(frame_b), "frame_b"),
        numpy_helper.from_array(f32(lang_table), "lang_table"),
        numpy_helper.from_array(f32(itn_table), "itn_table"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_t"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
    ]
    for name, (w, b) in zip(["lang", "emo", "event"], folded):
        inits.append(numpy_helper.from_array(f32(w), f"{name}_w"))
        inits.append(numpy_helper.from_array(f32(b), f"{name}_b"))

    nodes = [
        # Frame rows: [N, T, V].
        helper.make_node("MatMul", ["x", "frame_w"], ["frame_mm"]),
        helper.make_node("Add", ["frame_mm", "frame_b"], ["frame_logits"]),
        # Utterance mean of the features over the x_length valid frames: [N, 560].
        helper.make_node("ReduceSum", ["x", "axis_t"], ["x_sum"], keepdims=0),
        helper.make_node("Cast", ["x_length"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["len_f", "axis_last"], ["len_col"]),
        helper.make_node("Div", ["x_sum", "len_col"], ["pooled"]),
    ]
    for name in ["lang", "emo", "event"]:
        nodes += [
            helper.make_node("MatMul", ["pooled", f"{name}_w"], [f"{name}_mm"]),
            helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_q"]),
        ]
    nodes += [
        helper.make_node("Gather", ["lang_table", "language"], ["lang_forced"], axis=0),
        helper.make_node("Add", ["lang_q", "lang_forced"], ["q0"]),
        helper.make_node("Gather", ["itn_table", "text_norm"], ["q3"], axis=0),
    ]
    for i, name in enumerate(["q0", "emo_q", "event_q", "q3"]):
        nodes.append(helper.make_node("Unsqueeze", [name, "axis_t"], [f"row{i}"]))
    nodes.append(helper.make_node("Concat", ["row0", "row1", "row2", "row3", "frame_logits"], ["logits"], axis=1))

    graph = helper.make_graph(
        nodes,
        "sense_voice_stand_in",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", FEAT_DIM]),
            helper.make_tensor_value_info("x_length", TensorProto.INT32, ["N"]),
            helper.make_tensor_value_info("language", TensorProto.INT32, ["N"]),
            helper.make_tensor_value_info("text_norm", TensorProto.INT32, ["N"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "T", VOCAB])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pytorch")
    model.ir_version = 8
    meta = {
        "lfr_window_size": LFR_M,
        "lfr_window_shift": LFR_N,
        "normalize_samples": 0,
        "neg_mean": ",".join(f"{v:.6f}" for v in neg_mean),
        "inv_stddev": ",".join(f"{v:.6f}" for v in inv_stddev),
        "model_type": "sense_voice_ctc",
        "version": "2",
        "model_author": "iic",
        "maintainer": "k2-fsa",
        "vocab_size": VOCAB,
        "comment": "iic/SenseVoiceSmall (test stand-in generated by tests/assets/make_sensevoice_model.py)",
        "lang_auto": LANG_IDS["auto"],
        "lang_zh": LANG_IDS["zh"],
        "lang_en": LANG_IDS["en"],
        "lang_yue": LANG_IDS["yue"],
        "lang_ja": LANG_IDS["ja"],
        "lang_ko": LANG_IDS["ko"],
        "lang_nospeech": LANG_IDS["nospeech"],
        "with_itn": WITH_ITN,
        "without_itn": WITHOUT_ITN,
        "url": "https://huggingface.co/FunAudioLLM/SenseVoiceSmall",
    }
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = str(value)
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# Test audio and the reference decode.
# ---------------------------------------------------------------------------------------------


def tone(band, ms, amplitude=8000.0):
    n = SAMPLE_RATE * ms // 1000
    t = np.arange(n) / SAMPLE_RATE
    x = amplitude * np.sin(2.0 * math.pi * band_centre_hz(band) * t)
    ramp = SAMPLE_RATE * 10 // 1000  # 10 ms raised-cosine fades: no clicks
    fade = 0.5 - 0.5 * np.cos(math.pi * np.arange(ramp) / ramp)
    x[:ramp] *= fade
    x[-ramp:] *= fade[::-1]
    return x


def silence(ms):
    return np.zeros(SAMPLE_RATE * ms // 1000)


def spoken(tokens):
    bands = dict(TEXT_TOKENS)
    parts = [silence(200)]
    for token in tokens:
        parts += [tone(bands[token], 300), silence(150)]
    parts.append(silence(100))
    return np.round(np.concatenate(parts)).astype(np.int16)


def noise_clip():
    """1.337 s of deterministic, coloured noise plus a chirp (not a whole number of frames)."""
    n = 21397
    state = 12345
    white = np.empty(n)
    for i in range(n):
        state = (1103515245 * state + 12345) % (1 << 31)
        white[i] = state / float(1 << 30) - 1.0
    coloured = np.convolve(white, [0.5, 0.3, 0.2], mode="same")
    t = np.arange(n) / SAMPLE_RATE
    chirp = np.sin(2.0 * math.pi * (100.0 * t + 1500.0 * t * t))
    return np.round(6000.0 * coloured + 3000.0 * chirp).astype(np.int16)


def write_wav(path, samples):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def decode(evaluator, feats, language, text_norm):
    x = feats.astype(np.float32)[None]
    (logits,) = evaluator.run(
        None,
        {
            "x": x,
            "x_length": np.array([x.shape[1]], dtype=np.int32),
            "language": np.array([language], dtype=np.int32),
            "text_norm": np.array([text_norm], dtype=np.int32),
        },
    )
    ids = logits[0].argmax(axis=-1)
    out, prev = [], None
    for i in ids:
        if i != prev and i != BLANK_ID:
            out.append(TOKENS[i])
        prev = i
    return "".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_sensevoice_model.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    neg_mean, inv_stddev = cmvn_vectors()
    model = build_model(neg_mean, inv_stddev)
    onnx.save(model, os.path.join(out, "model.onnx"))
    with open(os.path.join(out, "tokens.txt"), "w", encoding="utf-8") as f:
        for i, token in enumerate(TOKENS):
            f.write(f"{token} {i}\n")

    clips = {"hello": ["▁he", "llo", "▁world"], "nihao": ["你", "好", "好", "。"]}
    cases = {
        ("hello", "auto", WITHOUT_ITN): "<|en|><|HAPPY|><|Speech|><|woitn|>▁hello▁world",
        ("hello", "zh", WITH_ITN): "<|zh|><|HAPPY|><|Speech|><|withitn|>▁hello▁world",
        ("nihao", "auto", WITH_ITN): "<|zh|><|SAD|><|Speech|><|withitn|>你好好。",
        ("nihao", "ja", WITHOUT_ITN): "<|ja|><|SAD|><|Speech|><|woitn|>你好好。",
    }
    evaluator = ReferenceEvaluator(model)
    expected = []
    for (clip, language, itn), want in cases.items():
        pcm = spoken(clips[clip])
        write_wav(os.path.join(out, f"{clip}.wav"), pcm)
        got = decode(evaluator, features(pcm, neg_mean, inv_stddev), LANG_IDS[language], itn)
        if got != want:
            sys.exit(f"self-check failed for {clip} ({language}, itn {itn}): {got!r} != {want!r}")
        expected.append({"wav": f"{clip}.wav", "language": language, "text_norm": itn, "raw": want})
    quiet = np.zeros(SAMPLE_RATE, dtype=np.int16)
    got = decode(evaluator, features(quiet, neg_mean, inv_stddev), LANG_IDS["auto"], WITHOUT_ITN)
    if got != "<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>":
        sys.exit(f"self-check failed for silence: {got!r}")

    noise = noise_clip()
    write_wav(os.path.join(out, "noise.wav"), noise)
    raw = fbank(noise)
    feats = features(noise, neg_mean, inv_stddev)
    raw.astype("<f4").tofile(os.path.join(out, "noise.fbank.f32"))
    feats.astype("<f4").tofile(os.path.join(out, "noise.features.f32"))
    reference = {
        "noise": {"samples": len(noise), "fbank_shape": list(raw.shape), "features_shape": list(feats.shape)},
        "decodes": expected,
        "vocab_size": VOCAB,
    }
    with open(os.path.join(out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)
    print(f"SenseVoice stand-in written to {out} (vocab {VOCAB}, self-check ok)")


if __name__ == "__main__":
    main()
