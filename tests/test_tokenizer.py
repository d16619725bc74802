"""Tokenizers round-trip and save in the Hugging Face format; the Mistral one equals sentencepiece."""

import sentencepiece as spm
from transformers import AutoTokenizer

from featureflow_dagster.tokenizer import mistral_model_file, mistral_tokenizer, train_bpe

TEXTS = [
    "The apple is in box F. Box F contains the",
    "def f(x):\n    return x = 1  # comment\n",
    "local function greet(name)\n  print(\"hi \" .. name)\nend",
    "Ünïcödé — naïve café, 日本語, emoji 🙂 and tabs\tend",
    "  leading spaces and trailing  ",
]


def test_bpe_round_trip_and_save(tmp_path):
    tok = train_bpe(TEXTS * 20, 300)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for t in TEXTS:
        ids = again(t, add_special_tokens=False).input_ids
        assert ids == tok(t, add_special_tokens=False).input_ids
        assert again.decode(ids) == t


def test_mistral_tokenizer_matches_sentencepiece(tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(mistral_model_file()))
    tok = mistral_tokenizer()
    assert len(tok) == 32000
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for t in TEXTS:
        assert again(t, add_special_tokens=False).input_ids == sp.encode(t), t
        assert again.decode(sp.encode(t)) == sp.decode(sp.encode(t))
