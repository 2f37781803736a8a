"""Write the seeds of the `wav` and `ct2` fuzz corpora (fuzz/corpus/wav, fuzz/corpus/ct2): small
valid WAV files in every format flint reads and a few it refuses, and a tiny CTranslate2
model.bin (version 6: an f16 matrix, an f32 vector, an int16 scalar, an alias) with broken
copies. The corpus tests (crates/flint-runtime/tests/fuzz_corpora.rs) replay them.

    python3 xtask/scripts/audio_fuzz_seeds.py
"""
import math
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


def wav(fmt_tag, channels, rate, bits, frames):
    """A RIFF/WAVE file of `frames` (lists of per-channel values in [-1, 1])."""
    data = bytearray()
    for frame in frames:
        for v in frame:
            if fmt_tag == 3 and bits == 32:
                data += struct.pack("<f", v)
            elif fmt_tag == 3 and bits == 64:
                data += struct.pack("<d", v)
            elif bits == 8:
                data += struct.pack("<B", max(0, min(255, round(v * 127 + 128))))
            else:
                full = 1 << (bits - 1)
                q = max(-full, min(full - 1, round(v * (full - 1))))
                data += (q & ((1 << bits) - 1)).to_bytes(bits // 8, "little")
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + bytes(data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(n, channels, rate):
    return [[math.sin(2 * math.pi * 440 * i / rate + c) * 0.5 for c in range(channels)] for i in range(n)]


def string(s):
    b = s.encode()
    return struct.pack("<H", len(b) + 1) + b + b"\0"


def variable(name, shape, type_id, payload):
    return string(name) + struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", d) for d in shape) + \
        struct.pack("<BI", type_id, len(payload)) + payload


def ct2(alias_target="m/weight", matrix_bytes=None):
    matrix = b"".join(struct.pack("<e", v) for v in [1.0, -2.0, 0.5, 3.0, 0.0, -0.25])
    vec = b"".join(struct.pack("<f", v) for v in [0.1, 0.2, 0.3])
    out = struct.pack("<I", 6) + string("TestSpec") + struct.pack("<II", 3, 3)
    out += variable("m/weight", [2, 3], 4, matrix if matrix_bytes is None else matrix_bytes)
    out += variable("m/bias", [3], 0, vec)
    out += variable("m/heads", [], 2, struct.pack("<h", 6))
    out += struct.pack("<I", 1) + string("m/tied") + string(alias_target)
    return out


def main():
    w = ROOT / "wav"
    w.mkdir(parents=True, exist_ok=True)
    (w / "u8-mono.wav").write_bytes(wav(1, 1, 8000, 8, tone(400, 1, 8000)))
    (w / "s16-stereo.wav").write_bytes(wav(1, 2, 22050, 16, tone(500, 2, 22050)))
    (w / "s24-mono.wav").write_bytes(wav(1, 1, 16000, 24, tone(300, 1, 16000)))
    (w / "s32-mono.wav").write_bytes(wav(1, 1, 44100, 32, tone(300, 1, 44100)))
    (w / "f32-3ch.wav").write_bytes(wav(3, 3, 48000, 32, tone(300, 3, 48000)))
    (w / "f64.wav").write_bytes(wav(3, 1, 16000, 64, tone(100, 1, 16000)))
    good = wav(1, 1, 16000, 16, tone(300, 1, 16000))
    (w / "cut-data.wav").write_bytes(good[: len(good) - 101])
    zero = bytearray(good)
    zero[24:28] = struct.pack("<I", 0)
    zero[28:32] = struct.pack("<I", 0)
    (w / "zero-rate.wav").write_bytes(bytes(zero))

    c = ROOT / "ct2"
    c.mkdir(parents=True, exist_ok=True)
    tiny = ct2()
    (c / "tiny.bin").write_bytes(tiny)
    (c / "cut.bin").write_bytes(tiny[: len(tiny) // 2])
    (c / "bad-bytes.bin").write_bytes(ct2(matrix_bytes=b"\0" * 13))
    (c / "bad-alias.bin").write_bytes(ct2(alias_target="m/missing"))


if __name__ == "__main__":
    main()
