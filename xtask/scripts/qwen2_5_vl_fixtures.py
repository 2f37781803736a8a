"""Make tests/fixtures/qwen2.5-vl: a tiny random Qwen2.5-VL (`model_type` qwen2_5_vl,
Qwen2_5_VLForConditionalGeneration) that transformers builds with a fixed seed, saved as a
Hugging Face directory with a small byte-level BPE and the processor's configs (min_pixels 56*56,
max_pixels 28*28*64, as tests/fixtures/images/qwen2vl.json), and `<name>.expected.safetensors`
with what transformers computes for its prompt (`tiny`: two images of different aspect ratios,
photo.png, a 12x18 patch grid, and wide.png, 2x64; `tiny-b`: screenshot.png alone):

- `pixel_values` `[patches, 3*2*14*14]` and `image_grid_thw`;
- `vision_hidden`: the vision blocks' output `[patches, 64]`, in the tower's window order;
- `vision_out`: the merger's output `[patches / 4, 96]`, in image order (what replaces the
  prompt's image tokens);
- `input_ids`, the M-RoPE `position_ids` `[3, tokens]` and `rope_delta` (transformers'
  get_rope_index), `logits` at every prompt position and `greedy` (8 new tokens), for the
  whole model.

`tiny`'s vision tower: 3 blocks of width 64 (4 heads of 16: the 2D rotary takes 4 frequencies
for rows and 4 for columns), SwiGLU MLP of 96 with biases, window_size 56 (windows of 2x2
merged tokens, so both grids end in partial windows), block 1 attending across the whole image;
the merger into a Qwen2 decoder 96 wide (3 heads of 32 on 1 KV head, M-RoPE sections [4, 6, 6]).
`tiny-b`: 2 blocks of width 128 (2 heads of 64), window_size 112, block 0 whole-image; a
decoder 64 wide of 3 layers (2 heads of 32, no GQA), sections [2, 7, 7].
Norm weights and biases are drawn away from their defaults so that each shows.

    pip install torch transformers safetensors tokenizers numpy pillow
    python3 xtask/scripts/qwen2_5_vl_fixtures.py
"""
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from fixture_tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = ROOT / "qwen2.5-vl"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "What is in these pictures? Compare them.",
          "You are a helpful assistant. system user assistant Picture 1: Picture 2:"] * 20
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = "What is in these pictures?"


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    build("tiny", 21, ["photo", "wide"],
          dict(depth=3, hidden_size=64, hidden_act="silu", intermediate_size=96, num_heads=4, in_channels=3,
               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=96,
               fullatt_block_indexes=[1]),
          dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=3,
               num_key_value_heads=1, mrope_section=[4, 6, 6]))
    build("tiny-b", 22, ["screenshot"],
          dict(depth=2, hidden_size=128, hidden_act="silu", intermediate_size=160, num_heads=2, in_channels=3,
               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64,
               fullatt_block_indexes=[0]),
          dict(hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=2,
               num_key_value_heads=2, mrope_section=[2, 7, 7]))


def build(name, seed, pictures, vision, text_sizes):
    d = OUT / name
    d.mkdir(parents=True)
    tok = train_bpe(CORPUS, SPECIALS, d / "tokenizer.json")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    # Qwen2_5_VLProcessor wants a video processor (torchvision); its image half is what it
    # does for images: the image processor, and each <|image_pad|> repeated once per merged
    # token, below.
    images.save_pretrained(d)
    fast.save_pretrained(d)
    (d / "chat_template.jinja").write_text(TEMPLATE)
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    torch.manual_seed(seed)
    sections = text_sizes.pop("mrope_section")
    cfg = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=dict(vocab_size=tok.get_vocab_size(), max_position_embeddings=1024, rms_norm_eps=1e-6,
                         initializer_range=0.2, bos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections},
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **text_sizes),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval().float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "norm" in n or "ln_q" in n:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif "visual" in n:
                p.mul_(3.0)
    model.save_pretrained(d, safe_serialization=True)

    pics = [Image.open(ROOT / "images" / f"{n}.png").convert("RGB") for n in pictures]
    content = [{"type": "image"} for _ in pics] + [{"type": "text", "text": QUESTION}]
    text = fast.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                    tokenize=False, chat_template=TEMPLATE)
    px = images(images=pics, return_tensors="pt")
    pv, thw = px["pixel_values"].float(), px["image_grid_thw"]
    parts = text.split("<|image_pad|>")
    assert len(parts) == len(pics) + 1
    expanded = parts[0]
    for (t, h, w), rest in zip(thw.tolist(), parts[1:]):
        expanded += "<|image_pad|>" * (t * h * w // 4) + rest
    input_ids = torch.tensor([tok.encode(expanded).ids])
    # The processor's token types (1 for image tokens), from which the model builds the
    # M-RoPE positions.
    types = (input_ids == ids["<|image_pad|>"]).to(torch.int32)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pv,
              "image_grid_thw": thw, "mm_token_type_ids": types}
    with torch.no_grad():
        vis = model.model.visual(pv, grid_thw=thw)
        positions, deltas = model.model.get_rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=thw)
        logits = model(**inputs).logits[0]
        greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=fast.pad_token_id)[0, inputs["input_ids"].shape[1]:]
    save_file({
        "pixel_values": pv.contiguous(),
        "image_grid_thw": thw.to(torch.int64).contiguous(),
        "vision_hidden": vis.last_hidden_state.float().contiguous(),
        "vision_out": vis.pooler_output.float().contiguous(),
        "input_ids": inputs["input_ids"][0].to(torch.int64).contiguous(),
        "position_ids": positions[:, 0].to(torch.int64).contiguous(),
        "rope_delta": deltas[0].to(torch.int64).contiguous(),
        "logits": logits.float().contiguous(),
        "greedy": greedy.to(torch.int64).contiguous(),
    }, str(OUT / f"{name}.expected.safetensors"))
    (OUT / f"{name}.prompt.txt").write_text(text)
    print(name, "grids", thw.tolist(), "prompt", inputs["input_ids"].shape[1], "tokens; greedy", greedy.tolist())


if __name__ == "__main__":
    main()
