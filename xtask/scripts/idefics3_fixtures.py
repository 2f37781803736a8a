"""Make tests/fixtures/idefics3: small random Idefics3 (SmolVLM-style) models built and run by
Hugging Face transformers, for flint's vision conformance tests; and tests/fixtures/images: a few
real-looking images with what transformers' Idefics3 image processor makes of them.

No SmolVLM weights can be downloaded where flint is built, so the models are random, made from a
config with a fixed seed: float32, eager attention, norm weights and biases perturbed away from 1
and 0, an initializer range large enough that logits are not flat. Each model directory is what
`save_pretrained` writes (config.json, model.safetensors, the tokenizer and processor files);
next to it, <name>.expected.safetensors holds the input ids and what each stage
gives: the vision encoder's output, the connector's output, the prefill logits and 8 greedy
tokens; the pixel values are in <name>.pixel_values.npy (also what `flint logits
--pixel-values` takes), the prompt and its two images next to them.

    pip install torch transformers pillow numpy safetensors tokenizers
    python3 xtask/scripts/idefics3_fixtures.py
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = ROOT / "idefics3"
IMAGES = ROOT / "images"

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>", "<global-img>"]
SPECIAL += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A picture of a red house with a green door, seen from the garden.",
    "User: What is in this image? Assistant: A cat sitting on a mat.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] { }",
    "Screenshots show text, buttons, menus and windows on a computer screen.",
    "Compare the two images and describe what is different between them.",
] * 20

CONFIGS = {
    # 16 patches of 8 (4 per side) -> 4 tokens per tile (scale 2); GQA 2; untied head.
    "tiny-a": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=2048),
        scale_factor=2, tie=False, size=64, seed=1, init=0.08,
    ),
    # 64 patches of 8 (8 per side) -> 4 tokens per tile (scale 4); GQA 3; tied head.
    "tiny-b": dict(
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                    image_size=64, patch_size=8),
        text=dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, rope_theta=100000.0, max_position_embeddings=2048),
        scale_factor=4, tie=True, size=128, seed=2, init=0.2,
    ),
}


def make_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(["<end_of_utterance>"])
    tok.save(str(path))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]})
    return fast


def photo(w, h, seed):
    """Smooth gradients, a few soft shapes and sensor noise: something like a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([120 + 100 * np.sin(x / w * 3.1 + 0.5), 90 + 80 * np.cos(y / h * 2.3),
                    140 + 60 * np.sin((x + y) / (w + h) * 5.0)], axis=-1)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(h // 10, h // 3)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(2))
    a = np.asarray(im).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def screenshot(w, h):
    """A window with a title bar, buttons and lines of text."""
    im = Image.new("RGB", (w, h), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, w, 24], fill=(40, 60, 110))
    d.text((8, 6), "flint - report.txt", fill=(255, 255, 255))
    for i, line in enumerate(["The capital of France is Paris.", "Decode: 18.0 tok/s on lavapipe",
                              "def main():", "    print('hello, world')", "Total: 1,234.50 EUR"]):
        d.text((12, 40 + 22 * i), line, fill=(20, 20, 20))
    for i in range(3):
        d.rectangle([w - 80 * (i + 1), h - 36, w - 80 * i - 10, h - 10], outline=(90, 90, 90), fill=(225, 225, 235))
        d.text((w - 80 * (i + 1) + 12, h - 30), ["OK", "Cancel", "Help"][i], fill=(0, 0, 0))
    return im


def wide(w, h):
    """A very wide banner."""
    im = Image.new("RGB", (w, h), (255, 220, 120))
    d = ImageDraw.Draw(im)
    for i in range(0, w, 37):
        d.line([(i, 0), (i + h, h)], fill=(200, 80, 40), width=3)
    d.text((10, h // 2 - 5), "A very wide banner image, much wider than it is tall", fill=(0, 0, 0))
    return im


def preprocessing_fixtures():
    IMAGES.mkdir(parents=True, exist_ok=True)
    images = {"photo": photo(320, 240, 3), "screenshot": screenshot(400, 300), "wide": wide(1000, 60)}
    proc = Idefics3ImageProcessorPil(size={"longest_edge": 192}, max_image_size={"longest_edge": 64})
    index = {"size": 192, "tile": 64, "images": {}}
    for name, im in images.items():
        im.save(IMAGES / f"{name}.png")
        # The processor sees the decoded PNG, as flint does.
        src = Image.open(IMAGES / f"{name}.png")
        out = proc(images=[[src]], return_tensors="np", return_row_col_info=True)
        pv = out["pixel_values"][0].astype(np.float32)  # [tiles, 3, 64, 64]
        # The normalised values are (u8 / 255 - 0.5) / 0.5: store the u8 and check the round trip.
        u8 = np.rint((pv * 0.5 + 0.5) * 255.0).astype(np.uint8)
        assert np.abs((u8.astype(np.float64) / 255.0 - 0.5) / 0.5 - pv).max() < 1e-6
        (IMAGES / f"{name}.tiles.u8").write_bytes(u8.tobytes())
        index["images"][name] = {"width": im.width, "height": im.height, "tiles": int(pv.shape[0]),
                                 "rows": int(out["rows"][0][0]), "cols": int(out["cols"][0][0])}
    (IMAGES / "processed.json").write_text(json.dumps(index, indent=1) + "\n")


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def model_fixture(name, spec, tok_path):
    torch.manual_seed(spec["seed"])
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tok = make_tokenizer(tok_path)
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vocab = len(tok)
    text = dict(spec["text"], vocab_size=vocab, rms_norm_eps=1e-5, initializer_range=spec["init"],
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                tie_word_embeddings=spec["tie"])
    vision = dict(spec["vision"], initializer_range=0.08)
    cfg = Idefics3Config(vision_config=vision, text_config=text, scale_factor=spec["scale_factor"],
                         image_token_id=image_token_id, tie_word_embeddings=spec["tie"])
    cfg._attn_implementation = "eager"
    model = Idefics3ForConditionalGeneration(cfg).eval().float()
    perturb(model, spec["seed"])
    model.save_pretrained(d, safe_serialization=True)

    v = spec["vision"]
    seq = (v["image_size"] // v["patch_size"]) ** 2 // spec["scale_factor"] ** 2
    improc = Idefics3ImageProcessorPil(size={"longest_edge": spec["size"]},
                                       max_image_size={"longest_edge": v["image_size"]})
    proc = Idefics3Processor(image_processor=improc, tokenizer=tok, image_seq_len=seq, chat_template=CHAT_TEMPLATE)
    proc.save_pretrained(d)

    images = [photo(90, 70, spec["seed"]), screenshot(150, 100)]
    prompt = "User:<image>What is in this image?<image>Compare them.<end_of_utterance>\nAssistant:"
    inputs = proc(text=[prompt], images=[images], return_tensors="pt")
    ids = inputs["input_ids"]
    pv = inputs["pixel_values"][0]  # the real images only
    assert not bool((pv == 0).all(dim=(1, 2, 3)).any()), "no padding images expected"
    with torch.no_grad():
        vis = model.model.vision_model(pixel_values=pv).last_hidden_state
        conn = model.model.connector(vis)
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"],
                       pixel_attention_mask=inputs["pixel_attention_mask"]).logits[0]
        gen = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    greedy = gen[0, ids.shape[1]:]
    top = logits.topk(2, dim=-1).values
    margin = (top[:, 0] - top[:, 1]).min().item()
    print(f"{name}: {ids.shape[1]} tokens, {pv.shape[0]} tiles, logits std {logits.std():.3f}, "
          f"smallest top-2 margin {margin:.4f}, greedy {greedy.tolist()}")
    save_file({
        "input_ids": ids[0].to(torch.int32).numpy(),
        "vision_out": vis.numpy().astype(np.float32),
        "connector_out": conn.numpy().astype(np.float32),
        "logits": logits.numpy().astype(np.float32),
        "greedy": greedy.to(torch.int32).numpy(),
    }, str(OUT / f"{name}.expected.safetensors"))
    np.save(OUT / f"{name}.pixel_values.npy", pv.numpy().astype(np.float32))
    (OUT / f"{name}.prompt.txt").write_text(prompt)
    for im_i, im in enumerate(images):
        im.save(OUT / f"{name}.image{im_i}.png")


def main():
    preprocessing_fixtures()
    OUT.mkdir(parents=True, exist_ok=True)
    tok_path = OUT / "tokenizer.json"
    for name, spec in CONFIGS.items():
        model_fixture(name, spec, tok_path)
    tok_path.unlink()


if __name__ == "__main__":
    main()
