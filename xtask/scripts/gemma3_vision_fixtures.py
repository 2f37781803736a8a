"""Make tests/fixtures/gemma3-vision: a small random Gemma 3 vision-language model
(`model_type` gemma3, Gemma3ForConditionalGeneration) built and run by Hugging Face
transformers: a SigLIP tower over 32x32 images of 8x8 patches, the average-pool projector
down to 4 tokens per image with its RMSNorm, and a Gemma 3 text decoder whose sliding window is
shorter than the prompt. Two models: `tiny` (two images, 32x32 of 8x8 patches pooled to 4
tokens, a text model 64 wide with GQA 4/2) and `tiny-b` (one wide image at 48x48 pooled to 9
tokens, one vision layer 48 wide, a text model 48 wide with 3 heads on 1 KV head, a window of
4). Next to each model directory, <name>.expected.safetensors holds the prompt's ids (expanded
as Gemma3Processor expands `<start_of_image>`), the pixel values (Gemma3ImageProcessorPil), the
projector's output, the logits at every position (image tokens attending to their own image
both ways, as transformers does with token_type_ids) and 8 greedy tokens; <name>.prompt.txt is
the prompt with `<image>` placeholders and <name>.image<i>.png the images.

    pip install torch transformers safetensors tokenizers numpy pillow
    python3 xtask/scripts/gemma3_vision_fixtures.py
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from fixture_tokenizer import train_bpe
from transformers import Gemma3Config, Gemma3ForConditionalGeneration
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gemma3-vision"
IMAGES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "images"
SPECIAL = ["<pad>", "<eos>", "<bos>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
CORPUS = [
    "User: look at this picture and say what it shows.",
    "A picture of a red house with a green door, seen from the garden.",
    "Compare the two images and describe what is different between them.",
] * 20


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    build("tiny", 3, dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
                          layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
          dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
               patch_size=8, layer_norm_eps=1e-6), 4, ["photo", "screenshot"],
          "User: look at this picture<image> and this one<image> Compare them.")
    build("tiny-b", 4, dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3,
                            num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                            layer_types=["sliding_attention", "full_attention"]),
          dict(hidden_size=48, intermediate_size=72, num_hidden_layers=1, num_attention_heads=3, image_size=48,
               patch_size=8, layer_norm_eps=1e-6), 9, ["wide"],
          "User: what does this banner say?<image> Describe it.")


def build(name, seed, text_sizes, vision, tokens_per_image, pictures, prompt):
    torch.manual_seed(seed)
    d = OUT / name
    d.mkdir(parents=True)
    tok = train_bpe(CORPUS, SPECIAL, d / "tokenizer.json")
    ids_of = {t: tok.token_to_id(t) for t in SPECIAL}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    text = dict(vocab_size=tok.get_vocab_size(), max_position_embeddings=512, rope_theta=100000.0,
                rope_local_base_freq=10000.0, rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=ids_of["<bos>"],
                eos_token_id=ids_of["<eos>"], pad_token_id=ids_of["<pad>"], **text_sizes)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                       boi_token_index=ids_of["<start_of_image>"], eoi_token_index=ids_of["<end_of_image>"],
                       image_token_index=ids_of["<image_soft_token>"], initializer_range=0.1)
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(cfg).eval().float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname and "vision" not in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "mm_input_projection" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "vision" in pname and ("norm" in pname) and pname.endswith("weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(d, safe_serialization=True)
    side = vision["image_size"]
    proc = Gemma3ImageProcessorPil(size={"height": side, "width": side})
    proc.save_pretrained(d)

    images = [Image.open(IMAGES / f"{p}.png").convert("RGB") for p in pictures]
    for i, im in enumerate(images):
        im.save(OUT / f"{name}.image{i}.png")
    (OUT / f"{name}.prompt.txt").write_text(prompt)
    seq = "\n\n<start_of_image>" + "<image_soft_token>" * tokens_per_image + "<end_of_image>\n\n"
    ids = tok.encode(prompt.replace("<image>", seq)).ids
    ids = torch.tensor([ids])
    pixels = torch.tensor(proc(images=images, return_tensors="np")["pixel_values"])
    token_type_ids = (ids == ids_of["<image_soft_token>"]).long()
    assert int(token_type_ids.sum()) == len(images) * tokens_per_image
    assert ids.shape[1] > 3 * text["sliding_window"]
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=pixels)
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        logits = model(input_ids=ids, pixel_values=pixels, token_type_ids=token_type_ids).logits[0]
        greedy = []
        cur = ids
        for _ in range(8):
            out = model(input_ids=cur, pixel_values=pixels,
                        token_type_ids=(cur == ids_of["<image_soft_token>"]).long()).logits[0, -1]
            nxt = int(out.argmax())
            greedy.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
    save_file({
        "input_ids": ids[0].numpy().astype(np.int64),
        "pixel_values": pixels.numpy().astype(np.float32),
        "image_features": feats.reshape(-1, text["hidden_size"]).numpy().astype(np.float32),
        "logits": logits.numpy().astype(np.float32),
        "greedy": np.array(greedy, dtype=np.int64),
    }, str(OUT / f"{name}.expected.safetensors"))
    print(name, "prompt", ids.shape[1], "tokens; greedy", greedy)


if __name__ == "__main__":
    main()
