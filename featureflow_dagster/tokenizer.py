"""Tokenizers, saved and loaded in the Hugging Face format (`tokenizer.json` + config).

- `train_bpe`: a byte-level BPE (GPT-2 style pre-tokenization) trained on documents.
- `mistral_tokenizer`: the Mistral-7B v0.1 SentencePiece model that the `mistral-common` wheel ships
  (`mistral_common/data/tokenizer.model.v1`), rebuilt as a `tokenizers` BPE so that it saves as
  `tokenizer.json` and loads with `AutoTokenizer` without protobuf or network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `<|endoftext|>` (BOS/EOS, separates documents) and `<|pad|>`."""
    from transformers import PreTrainedTokenizerFast  # here: building the asset graph does not need transformers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, model_max_length=1_000_000
    )


def mistral_model_file() -> Path:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the Mistral tokenizer comes with the 'mistral-common' package; install it")
    path = Path(spec.origin).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mistral-common; reinstall mistral-common==1.13.1")
    return path


def mistral_tokenizer(model_file: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The Mistral-7B v0.1 tokenizer (32,000 SentencePiece BPE pieces, byte fallback) as a fast tokenizer.

    SentencePiece BPE is a BPE whose merges are implied by the vocabulary: a merge (a, b) exists
    where a, b and ab are pieces, ranked by the score of ab. This is the same reconstruction that
    `transformers`' SentencePieceExtractor does, read through sentencepiece's own API instead of its
    protobuf (whose generated code conflicts with the protobuf runtime this project's stack pins).
    Equality with sentencepiece's own encoding is tested."""
    from transformers import PreTrainedTokenizerFast

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file or mistral_model_file()))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = []
    for piece, pid in vocab.items():
        if sp.is_control(pid) or sp.is_unknown(pid) or sp.is_byte(pid):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((scores[piece], vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    model = models.BPE(
        vocab=vocab,
        merges=[(m[3], m[4]) for m in merges],
        unk_token="<unk>",
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        model_max_length=1_000_000,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def token_strings(tok) -> list[str]:
    """Every token id of the tokenizer as the text it decodes to, for people to read (pages, metadata, the shell):
    'Ġwill' reads ' will'. A piece that is not valid UTF-8 on its own (part of a multi-byte character) shows its
    bytes as escapes (\\xe2\\x80) instead of U+FFFD, so that two such pieces stay apart."""
    out = []
    pieces = None
    for i in range(len(tok)):
        text = tok.decode([i])
        if "\ufffd" in text:
            if pieces is None:
                pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
            raw = _piece_bytes(pieces[i])
            text = raw.decode("utf-8", errors="backslashreplace") if raw is not None else pieces[i]
        out.append(text)
    return out


def _piece_bytes(piece: str) -> bytes | None:
    """The bytes of a byte-level BPE piece (GPT-2's byte-to-unicode map), of a SentencePiece byte piece ('<0xE2>'),
    or None when it is neither."""
    import re

    m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if m:
        return bytes([int(m.group(1), 16)])
    inverse = _byte_decoder()
    try:
        return bytes(inverse[c] for c in piece)
    except KeyError:
        return None


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, inverted (what byte-level BPE vocabularies are written in)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def capped_texts(texts: list[str], max_chars: int) -> list[str]:
    """The first texts up to `max_chars` characters in all (the last one cut)."""
    out, total = [], 0
    for t in texts:
        if total >= max_chars:
            break
        out.append(t[: max_chars - total])
        total += len(out[-1])
    return out


def build_tokenizer(spec, base_corpus=None, log=None):
    """The lineage's tokenizer: a BPE trained on the base node's training documents (`base_corpus`, the
    corpus table), the Mistral model, or a saved one. The `tokenizer` asset and `featureflow plan` share it."""
    if spec.kind == "bpe":
        texts = capped_texts(base_corpus[base_corpus["split"] == "train"]["text"].tolist(), spec.max_training_chars)
        if log:
            log(f"training a {spec.vocab_size}-token BPE on {sum(map(len, texts)):,} characters")
        return train_bpe(texts, spec.vocab_size)
    if spec.kind == "mistral":
        return mistral_tokenizer()
    return load_tokenizer(spec.path)


def tokenizer_hash(tok) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, merges, normalisation)."""
    import hashlib

    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
