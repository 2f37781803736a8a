"""Make tests/fixtures/audio: speech WAV files spoken by espeak-ng and the log-mel features
transformers' WhisperFeatureExtractor computes from them (its float64 NumPy path, checked here
against its float32 torch path).

- fox.16k.wav: espeak-ng's 22.05 kHz speech resampled to 16 kHz by sox (`rate -v`, no dither, so
  that the files come out the same every time), 16-bit.
  Features with 80 mels (fox.80.npy) and 128 mels (fox.128.npy, Whisper large-v3).
- weather.22k.wav: espeak-ng's output as it is (22.05 kHz, 16-bit), for flint's own resampler;
  weather.80.npy holds the features of sox's 16 kHz version of it, so the test measures how far
  flint's resampler (rubato) lands from sox's.

Each .npy is f32 [mels, frames] for the frames that hold sound: every later frame of the 30 s
window is silence, whose value is the window's floor, (max - 8 + 4) / 4 in log10 units; this
script checks that and the test checks flint's later frames against the stored minimum.

    apt-get install espeak-ng sox
    pip install transformers torch numpy
    python3 xtask/scripts/whisper_features_fixtures.py
"""
import json
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from transformers import WhisperFeatureExtractor

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "audio"
CLIPS = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "weather": "Tomorrow will be cloudy in the morning, with light rain from the west by the afternoon.",
}


def read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, path
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.astype(np.float64) / 32768.0, w.getframerate()


def features(samples, mels):
    fe = WhisperFeatureExtractor(feature_size=mels)
    padded = np.zeros(fe.n_samples)
    padded[: len(samples)] = samples
    exact = fe._np_extract_fbank_features(padded[None, :], "cpu")[0]
    torch_path = fe._torch_extract_fbank_features(padded[None, :].astype(np.float32), "cpu")[0]
    assert np.abs(exact - torch_path).max() < 1e-3, np.abs(exact - torch_path).max()
    # Frames past the sound (plus the half window that reaches into it) are the floor.
    sound = -(-(len(samples) + 200) // 160) + 1
    floor = exact.min()
    assert np.all(exact[:, sound:] == floor), "silence is not at the floor"
    return exact[:, :sound].astype(np.float32), float(floor)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    index = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CLIPS.items():
            raw = Path(tmp) / f"{name}.wav"
            subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
            at16 = Path(tmp) / f"{name}.16k.wav"
            subprocess.run(["sox", "-D", str(raw), "-b", "16", str(at16), "rate", "-v", "16000"], check=True)
            samples, rate = read_wav(at16)
            assert rate == 16000
            if name == "fox":
                (OUT / "fox.16k.wav").write_bytes(at16.read_bytes())
                wav, mels_list = "fox.16k.wav", [80, 128]
            else:
                (OUT / "weather.22k.wav").write_bytes(raw.read_bytes())
                wav, mels_list = "weather.22k.wav", [80]
            for mels in mels_list:
                feats, floor = features(samples, mels)
                np.save(OUT / f"{name}.{mels}.npy", feats)
                index[f"{name}.{mels}"] = {"wav": wav, "text": text, "mels": mels, "floor": floor,
                                            "frames": int(feats.shape[1]), "samples_16k": len(samples)}
    (OUT / "features.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
