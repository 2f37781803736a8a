"""Make tests/fixtures/models/<name>.json: what Hugging Face transformers computes for a GGUF model
(loaded with transformers' own GGUF support, dequantized to float32 on the CPU), for flint's
end-to-end tests: token ids of tricky strings, the chat template's rendering, and the top-5 logits
at every position of a fixed prompt. Only this small output is committed, never the weights.

    pip install torch transformers gguf accelerate
    python3 xtask/scripts/reference_logits.py smollm2-135m PATH/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 xtask/scripts/reference_logits.py gemma3-270m PATH/gemma-3-270m-q4_k_m.gguf
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models"

TRICKY = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "multiple   internal    spaces",
    "tabs\tand\nnewlines\n\n\nthree",
    "digits 0123456789 and 3.14159, 1,000,000",
    "unicode: café, naïve, Ærøskøbing, Ελληνικά, 中文字符, 日本語",
    "emoji 🦀🔥👍🏽 and symbols ©®™ ≤ ≥ ≠ √",
    "code: fn main() { println!(\"{}\", x + 1); }",
    "<|im_start|>user\nhi<|im_end|>",
    "<start_of_turn>user\nhi<end_of_turn>",
    "mixed CASE and apostrophes: don't, it's, we'll",
    "",
]
PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


def main():
    name, path = sys.argv[1], Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    model.eval()
    out = {"model": name, "file": path.name, "transformers": __import__("transformers").__version__}
    out["tokenize"] = [{"text": t, "ids": tok(t).input_ids} for t in TRICKY]
    if tok.chat_template:
        out["chat"] = {"messages": CHAT, "rendered": tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)}
    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    top = torch.topk(logits, 5, dim=-1)
    out["logits"] = {
        "prompt": PROMPT,
        "ids": ids,
        "top_ids": top.indices.tolist(),
        "top_logits": [[round(v, 5) for v in row] for row in top.values.tolist()],
    }
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    out["greedy"] = gen[0, len(ids):].tolist()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT / (name + '.json')}: {len(ids)} prompt tokens, greedy {out['greedy']}")


if __name__ == "__main__":
    main()
