"""Make tests/fixtures/whisper-random: a tiny random multilingual Whisper that transformers
builds with a fixed seed (WhisperForConditionalGeneration: width 64, 4 heads of 16, two encoder
and two decoder layers, MLP 192, 80 mels, a text context of 64; norm weights and biases and the
biases of every projection drawn away from their defaults so that a dropped one shows), saved
in f16 as a Hugging Face directory with a small byte-level BPE whose Whisper special tokens come
after the text tokens, as in the real vocabularies; and expected.safetensors with what
transformers computes (in f32, from the f16 weights) on fox.16k.wav's features:

- `encoder`: the encoder output, rows 0..256 of [1500, 64];
- `prompt`: <|startoftranscript|><|en|><|transcribe|><|notimestamps|> and six text tokens,
  `logits`: the decoder's logits at every one of those positions, teacher-forced;
- `greedy`: model.generate(language="en", task="transcribe", no timestamps, greedy, 24 new
  tokens), which applies the suppressed tokens, the tokens suppressed at the first step and
  the no-timestamps rule of generation_config.json;
- `detected`: model.detect_language's token (the first step from <|startoftranscript|>, argmax
  over the language tokens) and `language_probs` (en, fr: the softmax over those two logits);
  `greedy_fr_translate`: greedy ids with language="fr",
  task="translate".

    pip install transformers torch numpy tokenizers safetensors
    python3 xtask/scripts/whisper_hf_fixtures.py
"""
import json
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from fixture_tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = ROOT / "whisper-random"
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"] + \
           [f"<|{i * 0.02:.2f}|>" for i in range(8)]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Tomorrow will be cloudy in the morning.",
          "Speech recognition turns sound into text, window after window."] * 20


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(CORPUS, [], OUT / "tokenizer.json", vocab_size=200)
    tok.add_special_tokens(SPECIALS)
    tok.save(str(OUT / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    vocab = tok.get_vocab_size()
    assert ids["<|endoftext|>"] > 100 and ids["<|notimestamps|>"] == ids["<|0.00|>"] - 1, ids

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=vocab, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=192,
                        decoder_ffn_dim=192, max_source_positions=1500, max_target_positions=64,
                        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
                        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"])
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embed_tokens" in name or "proj" in name or "fc" in name:
                p.mul_(6.0)
            elif "decoder.embed_positions" in name:
                p.mul_(40.0)
        # The f16 checkpoint's values, computed in f32.
        for p in model.parameters():
            p.copy_(p.half().float())
    gen = model.generation_config
    gen.is_multilingual = True
    gen.lang_to_id = {"<|en|>": ids["<|en|>"], "<|fr|>": ids["<|fr|>"]}
    gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    gen.no_timestamps_token_id = ids["<|notimestamps|>"]
    gen.decoder_start_token_id = ids["<|startoftranscript|>"]
    gen.suppress_tokens = [tok.token_to_id("."), ids["<|startoflm|>"], ids["<|nospeech|>"], 7, 11]
    gen.begin_suppress_tokens = [tok.token_to_id("Ġ") or 0, ids["<|endoftext|>"]]
    gen.max_length = 64
    model.half().save_pretrained(OUT, safe_serialization=True)
    model.float()

    with wave.open(str(ROOT / "audio" / "fox.16k.wav")) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    fe = WhisperFeatureExtractor()
    padded = np.zeros(fe.n_samples)
    padded[: len(x)] = x
    feats = torch.from_numpy(fe._np_extract_fbank_features(padded[None], "cpu").astype(np.float32))
    prompt = [ids["<|startoftranscript|>"], ids["<|en|>"], ids["<|transcribe|>"], ids["<|notimestamps|>"]]
    prompt += tok.encode(" The quick brown fox").ids[:6]
    with torch.no_grad():
        enc = model.model.encoder(feats).last_hidden_state[0]
        out = model(input_features=feats, decoder_input_ids=torch.tensor([prompt]))
        greedy = model.generate(feats, language="en", task="transcribe", return_timestamps=False,
                                do_sample=False, num_beams=1, max_new_tokens=24)[0].tolist()
        detected = model.detect_language(feats)[0].item()
        first = model(input_features=feats, decoder_input_ids=torch.tensor([[ids["<|startoftranscript|>"]]])).logits[0, -1]
        lang_p = torch.softmax(first[[ids["<|en|>"], ids["<|fr|>"]]], -1)
        fr_translate = model.generate(feats, language="fr", task="translate", return_timestamps=False,
                                      do_sample=False, num_beams=1, max_new_tokens=24)[0].tolist()
    fr_prompt = [ids["<|startoftranscript|>"], ids["<|fr|>"], ids["<|translate|>"], ids["<|notimestamps|>"]]
    if fr_translate[:4] == fr_prompt:
        fr_translate = fr_translate[4:]
    # transformers 5 returns only the new tokens; older versions the prompt too.
    if greedy[:4] == prompt[:4]:
        greedy = greedy[4:]
    save_file({
        "encoder": enc[:256].contiguous(),
        "prompt": torch.tensor(prompt, dtype=torch.int64),
        "logits": out.logits[0].float().contiguous(),
        "greedy": torch.tensor([t for t in greedy if t != ids["<|endoftext|>"]], dtype=torch.int64),
        "detected": torch.tensor([detected], dtype=torch.int64),
        "language_probs": lang_p.float().contiguous(),
        "greedy_fr_translate": torch.tensor([t for t in fr_translate if t != ids["<|endoftext|>"]], dtype=torch.int64),
    }, str(OUT / "expected.safetensors"))
    print("greedy", greedy, "detected", detected, "fr translate", fr_translate, "vocab", vocab)


if __name__ == "__main__":
    main()
