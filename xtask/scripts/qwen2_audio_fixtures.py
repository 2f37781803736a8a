"""Make tests/fixtures/qwen2-audio: two tiny random Qwen2-Audio models (`model_type`
qwen2_audio, Qwen2AudioForConditionalGeneration: a Whisper-style encoder whose padded keys are
masked, a 2x average pool, a LayerNorm, a linear projector, and a Qwen2 decoder) that
transformers builds with fixed seeds, saved as Hugging Face directories with a small byte-level
BPE, the chat template of the published checkpoints and the processor's configs; and, for each,
`<name>.expected.safetensors` with what transformers' Qwen2AudioProcessor and the model compute:

- `input_ids`: the processor's ids for the chat prompt, each `<|AUDIO|>` expanded;
- `features` `[clips, mels, 3000]` and `lengths` (each clip's valid frames);
- `encoder`: the audio tower's output (after the pool and the LayerNorm) of each clip's valid
  positions, concatenated; `projected`: the projector's output of those rows;
- `logits` at every prompt position, and `greedy`: 8 new tokens, greedy.

`a`: 128 mels, width 64 (4 heads), 2 encoder layers, text 64 wide with GQA 4/2, untied head,
one clip (fox.16k.wav, 2.8 s). `b`: 80 mels, width 128 (2 heads), 1 encoder layer, text 96 wide
with 3 query heads on 1 KV head, `tie_word_embeddings` true (which transformers'
Qwen2AudioForConditionalGeneration does not apply: its head stays its own), two clips of
different lengths in one prompt (fox, and the first 5 s of long.16k.u8.wav written as
`long5.16k.wav`). Norm weights, biases and the
projector drawn away from their defaults so that each shows in the outputs.

    pip install torch transformers safetensors tokenizers numpy
    python3 xtask/scripts/qwen2_audio_fixtures.py
"""
import shutil
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                          Qwen2AudioProcessor, WhisperFeatureExtractor)

from fixture_tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = ROOT / "qwen2-audio"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "What does the speaker say? Describe the sound.",
          "You are a helpful assistant. Audio 1: Audio 2: system user assistant"] * 20
# The chat template of Qwen/Qwen2-Audio-7B-Instruct.
TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and "
    "message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if 'audio' in content or 'audio_url' in "
    "content %}{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


def read_wav(path):
    with wave.open(str(path)) as w:
        raw = w.readframes(w.getnframes())
        if w.getsampwidth() == 1:
            return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0


def write_long5():
    """The first 5 s of long.16k.u8.wav as 16-bit PCM: the same values, exactly."""
    with wave.open(str(ROOT / "audio" / "long.16k.u8.wav")) as w:
        raw = np.frombuffer(w.readframes(5 * 16000), dtype=np.uint8)
    pcm = ((raw.astype(np.int16) - 128) * 256).astype("<i2")
    with wave.open(str(ROOT / "audio" / "long5.16k.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def build(name, seed, mels, d_model, heads, enc_layers, text, clips, question):
    d = OUT / name
    d.mkdir(parents=True)
    tok = train_bpe(CORPUS, SPECIALS, d / "tokenizer.json")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fe = WhisperFeatureExtractor(feature_size=mels)
    proc = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=fast, chat_template=TEMPLATE)
    proc.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=mels, d_model=d_model, encoder_attention_heads=heads,
                          encoder_ffn_dim=2 * d_model + 32, encoder_layers=enc_layers, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=tok.get_vocab_size(), max_position_embeddings=1024,
                         rope_theta=10000.0, rms_norm_eps=1e-6, initializer_range=0.2,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **text),
        audio_token_index=tok.token_to_id("<|AUDIO|>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    cfg._attn_implementation = "eager"
    cfg.audio_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    model = Qwen2AudioForConditionalGeneration(cfg).eval().float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "norm" in n:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif "audio_tower" in n and ("proj" in n or "fc" in n or "conv" in n):
                p.mul_(4.0)
            elif "multi_modal_projector" in n:
                p.mul_(8.0)
    model.save_pretrained(d, safe_serialization=True)

    audios = [read_wav(ROOT / "audio" / c) for c in clips]
    content = [{"type": "audio", "audio_url": c} for c in clips] + [{"type": "text", "text": question}]
    text_prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=False)
    inputs = proc(text=text_prompt, audio=audios, sampling_rate=16000, return_tensors="pt")
    ids = inputs["input_ids"]
    feats = inputs["input_features"].float()
    fmask = inputs["feature_attention_mask"]
    inner = model.model
    with torch.no_grad():
        feat_len, out_len = inner.audio_tower._get_feat_extract_output_lengths(fmask.sum(-1))
        enc_mask = torch.arange(1500)[None, :] < feat_len[:, None]
        bias = torch.zeros(len(clips), 1, 1500, 1500)
        bias.masked_fill_(~enc_mask[:, None, None, :], float("-inf"))
        enc = inner.audio_tower(feats, attention_mask=bias).last_hidden_state
        proj = inner.multi_modal_projector(enc)
        keep = torch.arange(enc.shape[1])[None, :] < out_len[:, None]
        logits = model(input_ids=ids, input_features=feats, feature_attention_mask=fmask,
                       attention_mask=inputs["attention_mask"]).logits[0]
        greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=fast.pad_token_id)[0, ids.shape[1]:]
    save_file({
        "input_ids": ids[0].to(torch.int64).contiguous(),
        "features": feats.contiguous(),
        "lengths": fmask.sum(-1).to(torch.int64).contiguous(),
        "encoder": enc[keep].contiguous(),
        "projected": proj[keep].contiguous(),
        "logits": logits.float().contiguous(),
        "greedy": greedy.to(torch.int64).contiguous(),
    }, str(OUT / f"{name}.expected.safetensors"))
    print(name, "prompt", ids.shape[1], "tokens; audio tokens", out_len.tolist(), "greedy", greedy.tolist())


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    write_long5()
    build("a", 11, 128, 64, 4, 2,
          dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, tie_word_embeddings=False),
          ["fox.16k.wav"], "What does the speaker say?")
    build("b", 12, 80, 128, 2, 1,
          dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=3,
               num_key_value_heads=1, tie_word_embeddings=True),
          ["fox.16k.wav", "long5.16k.wav"], "Describe the sound.")


if __name__ == "__main__":
    main()
