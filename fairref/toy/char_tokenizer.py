"""A character-level ``tokenizer.json`` for the toy models, and fixed-length encoding (SPEC §7).

The toy checkpoints ship a ``tokenizer.json`` exactly like LLaDA and Dream do, so the loader
that reads a real model reads them too. The tokenizer is a ``WordLevel`` model over single
characters with a pre-tokenizer that isolates every character and a ``Fuse`` decoder that
joins them back without spaces; ``tokenizers.Tokenizer.from_file`` loads it.

Special tokens and their ids (the same ids go into ``config.json``)::

    <|pad|> 0   left padding of prompts to the fixed prompt length P
    <|bos|> 1   first token of every prompt
    <|eos|> 2   ends an answer and pads it to the generation length G
    <|mask|> 3  the diffusion mask token
    <|unk|> 4   required by WordLevel; never produced for task strings

Layout of one sequence (length L = P + G)::

    [pad ... pad, bos, t, :, body..., =] [answer..., eos, ..., eos]
     <------------ prompt, P ----------> <---- generation, G ---->

Legend: B batch, P prompt length, G generation length.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor

from fairref.toy.tasks import ALPHABET, MAX_ANSWER_LEN, MAX_PROMPT_LEN

#: special tokens in id order
SPECIAL_TOKENS: tuple[str, ...] = ("<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>", "<|unk|>")
PAD_ID, BOS_ID, EOS_ID, MASK_ID, UNK_ID = range(len(SPECIAL_TOKENS))
#: vocabulary size: the specials, then one id per character of the task alphabet
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(ALPHABET)
#: fixed prompt length: BOS plus the longest task prompt
PROMPT_LEN = 1 + MAX_PROMPT_LEN
#: fixed generation length: the longest answer plus at least two EOS
GEN_LEN = 16
assert GEN_LEN >= MAX_ANSWER_LEN + 1


def vocab() -> dict[str, int]:
    """Token string → id: specials first, then the alphabet in its fixed order."""
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(ALPHABET))}


def special_token_ids() -> dict[str, int]:
    """The ids that ``config.json`` carries (``mask_token_id`` etc.)."""
    return {
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "mask_token_id": MASK_ID,
    }


def build_tokenizer() -> Tokenizer:
    """The character-level tokenizer (see the module docstring)."""
    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token="<|unk|>"))
    # every single character becomes its own pre-token, hence its own token
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def write_tokenizer(directory: str | Path) -> Path:
    """Write ``tokenizer.json`` into ``directory`` (created if needed); returns its path."""
    path = Path(directory) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path))
    return path


def _char_ids(text: str) -> list[int]:
    """Ids of the characters of ``text``; ``ValueError`` for a character outside ALPHABET."""
    v = vocab()
    bad = sorted({c for c in text if c not in ALPHABET})
    if bad:
        raise ValueError(f"text {text!r} has characters {bad} outside the task alphabet")
    return [v[c] for c in text]


def encode_prompts(prompts: list[str], P: int = PROMPT_LEN) -> Tensor:
    """Left-padded prompt ids ``(B, P)``: pads, BOS, then the characters."""
    rows = []
    for p in prompts:
        ids = [BOS_ID] + _char_ids(p)
        if len(ids) > P:
            raise ValueError(f"prompt {p!r} needs {len(ids)} > P={P} tokens; raise P")
        rows.append([PAD_ID] * (P - len(ids)) + ids)
    return torch.tensor(rows, dtype=torch.long)  # (B, P)


def encode_answers(answers: list[str], G: int = GEN_LEN) -> Tensor:
    """Answer ids ``(B, G)``: the characters, then EOS up to G (at least one EOS)."""
    rows = []
    for a in answers:
        ids = _char_ids(a)
        if len(ids) >= G:
            raise ValueError(f"answer {a!r} needs {len(ids) + 1} > G={G} tokens; raise G")
        rows.append(ids + [EOS_ID] * (G - len(ids)))
    return torch.tensor(rows, dtype=torch.long)  # (B, G)


def decode_completion(ids: list[int] | Tensor) -> str:
    """The generated text up to the first EOS. A special or mask token before it becomes
    ``"\\x00"``, which no task parser accepts, so such a completion never counts as correct."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    inv = {i: t for t, i in vocab().items()}
    return "".join(inv[i] if i >= len(SPECIAL_TOKENS) else "\x00" for i in ids)
