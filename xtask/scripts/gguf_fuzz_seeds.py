"""Write fuzz/corpus/gguf seeds: tiny but complete GGUF files (a llama and a gemma3 decoder of one
layer with a byte-level BPE vocabulary, tensors in Q8_0/Q4_1/Q5_0 and Q4_K/Q6_K/F16/F32), so the
fuzzer starts from files that get past the header into the config, tokenizer and tensor paths
(the K-quant ones hold only the embedding table and a norm, to stay small).

    pip install gguf numpy
    python3 xtask/scripts/gguf_fuzz_seeds.py
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize

OUT = Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "gguf"


def tokens(w):
    vocab = ["a", "b", "c", "ab", "bc", "<|im_start|>", "<|im_end|>", "Ġ"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_merges(["a b", "b c"])
    w.add_token_types([1, 1, 1, 1, 1, 3, 3, 1])
    w.add_bos_token_id(5)
    w.add_eos_token_id(6)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def tensor(w, name, shape, qtype, rng):
    data = rng.standard_normal(shape).astype(np.float32)
    if qtype in (Q.F32,):
        w.add_tensor(name, data)
    elif qtype == Q.F16:
        w.add_tensor(name, data.astype(np.float16))
    elif qtype in (Q.Q4_K, Q.Q6_K):
        # The gguf package cannot quantize K-quants: random blocks of the right size.
        block, size = {Q.Q4_K: (256, 144), Q.Q6_K: (256, 210)}[qtype]
        raw = rng.integers(0, 256, (shape[0], shape[-1] // block * size), dtype=np.uint8) if len(shape) == 2 \
            else rng.integers(0, 256, (shape[0] // block * size,), dtype=np.uint8)
        w.add_tensor(name, raw, raw_dtype=qtype)
    else:
        w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)


def seed(path, arch, width, qtypes):
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(width)
    w.add_feed_forward_length(width)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_context_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        w.add_sliding_window(16)
        w.add_key_length(width // 2)
    tokens(w)
    mat, vec = qtypes
    tensor(w, "token_embd.weight", (8, width), mat, rng)
    tensor(w, "output_norm.weight", (width,), vec, rng)
    if width > 64:
        # K-quant seeds stay small: the table and a norm are enough to reach their decoders.
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return
    for part in ["attn_norm", "ffn_norm"]:
        tensor(w, f"blk.0.{part}.weight", (width,), vec, rng)
    for part, shape in [("attn_q", (width, width)), ("attn_k", (width // 2, width)), ("attn_v", (width // 2, width)),
                        ("attn_output", (width, width)), ("ffn_gate", (width, width)), ("ffn_up", (width, width)),
                        ("ffn_down", (width, width))]:
        tensor(w, f"blk.0.{part}.weight", shape, mat, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    seed(OUT / "llama-q8_0.gguf", "llama", 32, (Q.Q8_0, Q.F32))
    seed(OUT / "llama-q4_1.gguf", "llama", 32, (Q.Q4_1, Q.F16))
    seed(OUT / "llama-q5_0.gguf", "llama", 32, (Q.Q5_0, Q.F32))
    seed(OUT / "gemma3-q4_k.gguf", "gemma3", 256, (Q.Q4_K, Q.F32))
    seed(OUT / "gemma3-q6_k.gguf", "gemma3", 256, (Q.Q6_K, Q.F32))
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)
