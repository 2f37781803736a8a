"""Add to tests/fixtures/images what transformers' Gemma 3 image processor (the PIL backend,
`Gemma3ImageProcessorPil`, Pan & Scan off) makes of the three test images: each resized with
PIL's bilinear filter to 224x224 (the class default) and to 96x40 (wider than tall, enlarging
one way and shrinking the other), stored as 8-bit RGB planes before normalisation
(<image>.gemma3-<w>x<h>.u8, [3, h, w]) after checking that the normalised values are
(u8 / 255 - 0.5) / 0.5 exactly; gemma3.json indexes them.

    pip install transformers pillow numpy
    python3 xtask/scripts/gemma3_image_fixtures.py
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

IMAGES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "images"
SIZES = [(224, 224), (96, 40)]


def main():
    index = {"sizes": [], "images": ["photo", "screenshot", "wide"]}
    for w, h in SIZES:
        proc = Gemma3ImageProcessorPil(size={"height": h, "width": w})
        index["sizes"].append([w, h])
        for name in index["images"]:
            src = Image.open(IMAGES / f"{name}.png")
            pv = proc(images=[src], return_tensors="np")["pixel_values"][0].astype(np.float32)  # [3, h, w]
            assert pv.shape == (3, h, w), pv.shape
            u8 = np.rint((pv * 0.5 + 0.5) * 255.0).astype(np.uint8)
            assert np.abs((u8.astype(np.float64) / 255.0 - 0.5) / 0.5 - pv).max() < 1e-6
            (IMAGES / f"{name}.gemma3-{w}x{h}.u8").write_bytes(u8.tobytes())
    (IMAGES / "gemma3.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
