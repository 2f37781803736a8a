"""Add to tests/fixtures/images what transformers' Qwen2-VL image processor (the PIL backend,
`Qwen2VLImageProcessorPil`, as Qwen2.5-VL uses it) makes of the three test images, with
min_pixels 56*56 and max_pixels 28*28*64 (small, so the fixtures stay small; the wide banner is
enlarged one way): the smart-resized image as 8-bit RGB (<image>.qwen2vl.u8, [h, w, 3]), its
patch grid, and rows of `pixel_values` (the first four, a middle one and the last) with the
sum of all values; qwen2vl.json indexes them.

    pip install transformers pillow numpy
    python3 xtask/scripts/qwen2_vl_image_fixtures.py
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "images"
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 64


def main():
    proc = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    index = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "images": {}}
    mean, std = np.array(OPENAI_CLIP_MEAN), np.array(OPENAI_CLIP_STD)
    for name in ["photo", "screenshot", "wide"]:
        src = Image.open(IMAGES / f"{name}.png").convert("RGB")
        out = proc(images=[src], return_tensors="np")
        pv = out["pixel_values"].astype(np.float32)
        t, gh, gw = (int(v) for v in out["image_grid_thw"][0])
        h, w = gh * 14, gw * 14
        # The resized image itself, from PIL as the processor resized it.
        resized = np.asarray(src.resize((w, h), resample=Image.BICUBIC))
        # Un-patchify pixel_values' first temporal copy back to [3, h, w] and check it is the
        # resized image normalised.
        x = pv.reshape(gh // 2, gw // 2, 2, 2, 3, 2, 14, 14)[:, :, :, :, :, 0]
        img = x.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, h, w)
        want = (resized.transpose(2, 0, 1) / 255.0 - mean[:, None, None]) / std[:, None, None]
        assert np.abs(img - want).max() < 1e-5, np.abs(img - want).max()
        (IMAGES / f"{name}.qwen2vl.u8").write_bytes(resized.astype(np.uint8).tobytes())
        rows = sorted({0, 1, 2, 3, pv.shape[0] // 2, pv.shape[0] - 1})
        index["images"][name] = {
            "height": h, "width": w, "grid": [t, gh, gw], "rows": rows,
            "values": [[float(v) for v in pv[r]] for r in rows], "sum": float(pv.astype(np.float64).sum()),
        }
    (IMAGES / "qwen2vl.json").write_text(json.dumps(index) + "\n")


if __name__ == "__main__":
    main()
