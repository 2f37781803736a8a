"""The small byte-level BPE tokenizer the model fixture scripts train on their corpus."""
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_bpe(corpus, special_tokens, path: Path, vocab_size=300) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` on `corpus` with `special_tokens` first; save it
    to `path` (tokenizer.json) and return it."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(path))
    return tok
