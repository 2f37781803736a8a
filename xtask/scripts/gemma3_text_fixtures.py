"""Make tests/fixtures/gemma3-text: small random Gemma 3 text models (`model_type` gemma3_text,
Gemma3ForCausalLM) built and run by Hugging Face transformers, for the Gemma 3 family's
Hugging Face loader in flint.

Each model directory is what `save_pretrained` writes (config.json, model.safetensors) with a
small trained byte-level BPE tokenizer; next to it, <name>.expected.safetensors holds the
prompt's ids, the logits at every position and 8 greedy tokens. The models are float32 with
eager attention, norm weights perturbed away from 0 (Gemma's norms scale by 1 + w), and a
sliding window shorter than the prompt, so that the local layers' window, the global layers,
QK-norm, the sandwich norms, the embedding scale and the query scale
(`query_pre_attn_scalar`) all show in the logits.

    pip install torch transformers safetensors tokenizers numpy
    python3 xtask/scripts/gemma3_text_fixtures.py
"""
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from fixture_tokenizer import train_bpe
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gemma3-text"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] { }",
    "A long sentence that goes on and on, so that a window of a few tokens is shorter than it.",
    "Question: what is 3 + 5? Answer: 8.",
] * 20

CONFIGS = {
    # Six layers, the sixth global; window 6 over a prompt of about 30 tokens; GQA 2; head_dim 16
    # and a query scale from query_pre_attn_scalar 24 (not head_dim).
    "tiny-a": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=6,
                   rope_theta=100000.0, rope_local_base_freq=10000.0, seed=1),
    # Three layers with the third global (a pattern of 3), MHA, head_dim 32 > hidden / heads.
    "tiny-b": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2,
                   num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=5,
                   rope_theta=1000000.0, rope_local_base_freq=10000.0, seed=2, pattern=3),
}

PROMPT = "A long sentence that goes on and on, so that a window of a few tokens is shorter than it. The"


def make_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    train_bpe(CORPUS, ["<pad>", "<eos>", "<bos>"], path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def model_fixture(name, spec):
    spec = dict(spec)
    seed = spec.pop("seed")
    pattern = spec.pop("pattern", 6)
    torch.manual_seed(seed)
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tok = make_tokenizer(d / "tokenizer.json")
    layers = spec["num_hidden_layers"]
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    cfg = Gemma3TextConfig(vocab_size=len(tok), max_position_embeddings=512, rms_norm_eps=1e-6,
                           hidden_activation="gelu_pytorch_tanh", layer_types=layer_types,
                           initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **spec)
    cfg._attn_implementation = "eager"
    model = Gemma3ForCausalLM(cfg).eval().float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)

    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 4 * spec["sliding_window"], ids.shape
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    save_file({
        "input_ids": ids[0].numpy().astype(np.int64),
        "logits": logits.numpy().astype(np.float32),
        "greedy": greedy.numpy().astype(np.int64),
    }, str(OUT / f"{name}.expected.safetensors"))
    print(name, "prompt", ids.shape[1], "tokens; greedy", greedy.tolist())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, spec in CONFIGS.items():
        model_fixture(name, spec)


if __name__ == "__main__":
    main()
