"""Tiny byte-level BPE tokenizers built locally (no Hub download).

CLIP and Qwen2 tokenizers are byte-level BPE: a vocab of the 256 byte symbols plus
merged words, and a merges list. We merge a small word list into whole tokens so
prompts tokenize to a handful of ids, as with the real tokenizers.
"""

from __future__ import annotations

from functools import lru_cache

# Words that become single tokens. The Qwen-Image prompt template must encode its
# prefix in exactly 34 tokens (the pipeline drops that many), so every word of the
# template is here; the rest are common prompt words.
QWEN_TEMPLATE_WORDS = (
    "system", "user", "assistant", "Describe", "the", "image", "by", "detailing", "color",
    "shape", "size", "texture", "quantity", "text", "spatial", "relationships", "of",
    "objects", "and", "background",
)
PROMPT_WORDS = (
    "a", "an", "photo", "painting", "cat", "dog", "astronaut", "riding", "horse", "on",
    "mars", "red", "blue", "green", "house", "tree", "mountain", "lake", "sunset", "city",
    "night", "in", "with", "high", "quality", "blurry", "low", "bad", "watercolor", "fox",
    "forest", "portrait", "cinematic", "lighting", "detailed", "of", "the", "and",
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _byte_symbols(text: str) -> list[str]:
    table = bytes_to_unicode()
    return [table[b] for b in text.encode("utf-8")]


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the lowest-ranked adjacent pair."""
    symbols = list(symbols)
    while len(symbols) > 1:
        ranked = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))]
        rank, i = min(ranked)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _merge_into_one_token(
    symbols: list[str], vocab: dict[str, int], merges: list[tuple[str, str]], ranks: dict[tuple[str, str], int]
) -> None:
    """Append merges until `symbols` encodes as a single token.

    New merges get the lowest priority, so words already merged keep encoding as one token.
    """
    while len(pieces := _apply_bpe(symbols, ranks)) > 1:
        pair = (pieces[0], pieces[1])
        ranks[pair] = len(merges)
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))


def clip_vocab_and_merges(words=PROMPT_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP layout: bytes, bytes + '</w>', merged words, then the two special tokens last."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(byte_chars)}
    for c in byte_chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _byte_symbols(word.lower())
        symbols[-1] += "</w>"
        _merge_into_one_token(symbols, vocab, merges, ranks)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def qwen_vocab_and_merges(words=QWEN_TEMPLATE_WORDS + PROMPT_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Qwen2 layout: bytes, then each word merged with and without its leading space."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for form in (word, " " + word):
            _merge_into_one_token(_byte_symbols(form), vocab, merges, ranks)
    return vocab, merges


QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)


def build_clip_tokenizer(model_max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab, merges = qwen_vocab_and_merges()
    for token in QWEN_SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )


# Letters and digits as pieces of their own, so any plain prompt tokenizes without <unk>.
T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?():"


def t5_vocab(words=PROMPT_WORDS) -> list[tuple[str, float]]:
    """A Unigram vocab in the T5/UMT5 layout: <pad>=0, </s>=1, <unk>=2, then whole words, then characters.

    Whole words (with the SentencePiece word-start mark "▁") score higher than characters, so each prompt
    word is one token and anything else falls back to single characters.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {piece for piece, _ in vocab}
    for word in words:
        piece = "▁" + word
        if piece not in seen:
            vocab.append((piece, -1.0))
            seen.add(piece)
    for char in T5_CHARACTERS + T5_CHARACTERS.upper():
        for piece in (char, "▁" + char):
            if piece not in seen:
                vocab.append((piece, -10.0))
                seen.add(piece)
    return vocab


def build_t5_tokenizer(model_max_length: int = 512):
    """The UMT5 tokenizer's shape (Unigram, Metaspace, `</s>` appended), built from a word list offline.

    The real google/umt5-xxl tokenizer needs its 256k-piece SentencePiece model from the Hub; transformers 5's
    T5Tokenizer takes a (piece, score) list directly, so no sentencepiece package is needed.
    """
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_vocab(), extra_ids=0, model_max_length=model_max_length)
