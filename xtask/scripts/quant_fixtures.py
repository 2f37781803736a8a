"""Make tests/fixtures/quant/: blocks of every GGUF format flint supports, with their values as
dequantized by gguf-py (llama.cpp's own Python package), for flint-ref's dequantization test.

Each format gets random blocks (finite scales) and, where a model file is given, the first blocks
of a real tensor of that format. Writes <fmt>.bin (raw blocks) and <fmt>.f32 (little-endian f32).

    pip install gguf numpy
    python3 xtask/scripts/quant_fixtures.py [MODEL.gguf ...]
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "quant"
FORMATS = {  # name: (type, block bytes, f16 scale offsets)
    "q8_0": (T.Q8_0, 34, [0]),
    "q4_0": (T.Q4_0, 18, [0]),
    "q4_1": (T.Q4_1, 20, [0, 2]),
    "q5_0": (T.Q5_0, 22, [0]),
    "q4_k": (T.Q4_K, 144, [0, 2]),
    "q6_k": (T.Q6_K, 210, [208]),
    "q5_k": (T.Q5_K, 176, [0, 2]),  # last, so the formats before it keep their random blocks
}
RANDOM_BLOCKS = 8
REAL_BLOCKS = 8


def main():
    rng = np.random.default_rng(7)
    real = {}
    for path in sys.argv[1:]:
        for t in GGUFReader(path).tensors:
            name = t.tensor_type.name.lower()
            if name in FORMATS and name not in real:
                real[name] = bytes(t.data.tobytes()[: REAL_BLOCKS * FORMATS[name][1]])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (qtype, size, scales) in FORMATS.items():
        blocks = bytearray(rng.integers(0, 256, RANDOM_BLOCKS * size, dtype=np.uint8).tobytes())
        for b in range(RANDOM_BLOCKS):
            for off in scales:
                scale = np.float16(rng.uniform(-0.05, 0.05) if off else rng.uniform(0.001, 0.05))
                blocks[b * size + off : b * size + off + 2] = scale.tobytes()
        blocks += real.get(name, b"")
        values = dequantize(np.frombuffer(bytes(blocks), dtype=np.uint8), qtype).astype("<f4")
        (OUT / f"{name}.bin").write_bytes(bytes(blocks))
        (OUT / f"{name}.f32").write_bytes(values.tobytes())
        print(f"{name}: {len(blocks) // size} blocks ({'with' if name in real else 'no'} real ones)")


if __name__ == "__main__":
    main()
