"""Make tests/fixtures/qwen2: a small random Qwen2 text model (`model_type` qwen2,
Qwen2ForCausalLM) built and run by Hugging Face transformers, with a small trained byte-level
BPE tokenizer; tiny.expected.safetensors holds the prompt's ids, the logits at every position
and 8 greedy tokens. float32, eager attention, the Q/K/V biases and norm weights drawn away
from their initial zeros and ones so that both show in the logits; GQA 2, an untied head.

    pip install torch transformers safetensors tokenizers numpy
    python3 xtask/scripts/qwen2_fixtures.py
"""
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from fixture_tokenizer import train_bpe
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "qwen2"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is 3 + 5? Answer: 8.",
    "Qwen models have biases on their query, key and value projections.",
] * 20
PROMPT = "Question: what is 3 + 5? The quick brown fox has biases on its query, key and value projections."


def main():
    torch.manual_seed(5)
    d = OUT / "tiny"
    if OUT.exists():
        shutil.rmtree(OUT)
    d.mkdir(parents=True)
    tok = train_bpe(CORPUS, ["<|endoftext|>", "<|im_end|>"], d / "tokenizer.json")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(d)
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1000000.0,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.2,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    cfg._attn_implementation = "eager"
    model = Qwen2ForCausalLM(cfg).eval().float()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(d, safe_serialization=True)
    ids = torch.tensor([tok.encode(PROMPT).ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    save_file({
        "input_ids": ids[0].numpy().astype(np.int64),
        "logits": logits.numpy().astype(np.float32),
        "greedy": greedy.numpy().astype(np.int64),
    }, str(OUT / "tiny.expected.safetensors"))
    print("prompt", ids.shape[1], "tokens; greedy", greedy.tolist())


if __name__ == "__main__":
    main()
