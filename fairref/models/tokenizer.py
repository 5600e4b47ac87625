"""A thin wrapper over a ``tokenizer.json`` (SPEC §7).

``tokenizer.json`` is the one tokenizer format shared by LLaDA, Dream and the toy models;
the Rust ``tokenizers`` library reads it, no ``trust_remote_code`` needed. The special ids
(mask, eos, pad, bos) come from the checkpoint's ``config.json`` when it is beside the
tokenizer (the ids the model was trained with); otherwise they are looked up by their
token strings in the tokenizer (LLaDA ``<|mdm_mask|>``, Dream and toy ``<|mask|>``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from fairref.files import read_json

#: token strings tried, in order, when config.json does not give the id
_SPECIAL_NAMES: dict[str, tuple[str, ...]] = {
    "mask": ("<|mdm_mask|>", "<|mask|>", "[MASK]", "<mask>"),
    "eos": ("<|eot_id|>", "<|endoftext|>", "<|eos|>", "</s>", "[EOS]"),
    "pad": ("<|pad|>", "[PAD]", "<pad>"),
    "bos": ("<|startoftext|>", "<|beginoftext|>", "<|bos|>", "<s>", "[BOS]"),
}


@dataclass(frozen=True)
class TextTokenizer:
    """``encode``/``decode`` plus the special ids of one model."""

    #: the underlying ``tokenizers.Tokenizer``
    tokenizer: Tokenizer
    #: the [MASK] id of the diffusion process (always present)
    mask_token_id: int
    #: end-of-text id, if any
    eos_token_id: int | None
    #: padding id, if any
    pad_token_id: int | None
    #: begin-of-text id, if any
    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of ``text``; no BOS/EOS unless ``add_special_tokens`` (then the tokenizer's
        own post-processor decides)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load ``path/tokenizer.json`` (``path`` a directory, or the file itself).

    A missing file raises ``FileNotFoundError``, a corrupt one ``ValueError``, each
    naming the file."""
    path = Path(path)
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}: a checkpoint that generates "
                                "text needs the tokenizer.json of its model beside config.json")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust reader raises a bare Exception for every parse error
        raise ValueError(f"{file} is not a readable tokenizer.json ({e}); it may be "
                         "truncated or corrupt: copy it again from the model's files") from e
    ids = _ids_from_config(file.parent / "config.json")
    for role, names in _SPECIAL_NAMES.items():
        if ids.get(role) is None:
            ids[role] = next((tok.token_to_id(n) for n in names
                              if tok.token_to_id(n) is not None), None)
    if ids["mask"] is None:
        raise ValueError(f"{file}: cannot find the mask token id: config.json beside it has "
                         f"no 'mask_token_id' and none of {_SPECIAL_NAMES['mask']} is a token")
    for role, i in ids.items():
        if i is not None and (not isinstance(i, int) or isinstance(i, bool) or i < 0):
            raise ValueError(f"{file}: {role}_token_id must be a non-negative integer, got {i!r}")
    return TextTokenizer(tok, ids["mask"], ids["eos"], ids["pad"], ids["bos"])


def _ids_from_config(config_file: Path) -> dict[str, int | None]:
    if not config_file.is_file():
        return {}
    raw = read_json(config_file, "model config")
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(raw).__name__}")
    out = {}
    for role in _SPECIAL_NAMES:
        v = raw.get(f"{role}_token_id")
        # HF allows a list of eos ids; the first is the canonical one
        out[role] = v[0] if isinstance(v, list) and v else v
    return out


# --- prompt encoding -------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFormat:
    """How a model expects its prompts laid out (a ``generation_config.json`` may set both)."""

    add_bos: bool = False  # prepend the BOS id to every prompt
    prompt_length: int | None = None  # left-pad to this fixed length as *visible* tokens

    def __post_init__(self) -> None:
        if not isinstance(self.add_bos, bool):
            raise ValueError(f"add_bos must be true or false, got {self.add_bos!r}")
        p = self.prompt_length
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"prompt_length must be an int >= 1 or null, got {p!r}")


def encode_prompts(tok: TextTokenizer, prompts: list[str], fmt: PromptFormat = PromptFormat()
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (B, P) of ``prompts`` in ``fmt``, left-padded, and their attention mask.

    With ``fmt.prompt_length`` every prompt is left-padded to that length with the pad id
    *as visible tokens* (the format of a model trained on fixed-length padded prompts, like
    the toy models), and the mask is None. Otherwise a batch of unequal prompts is
    left-padded to the longest, as the public loops expect, and the mask (B, P) is False on
    the padding (None when nothing is padded). The pad id is the mask id when the
    tokenizer has none (padded keys are masked out of attention anyway).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    bos = [tok.bos_token_id] if fmt.add_bos and tok.bos_token_id is not None else []
    enc = [bos + tok.encode(p) for p in prompts]
    P = max(len(e) for e in enc)
    if fmt.prompt_length is not None:
        if P > fmt.prompt_length:
            raise ValueError(f"a prompt has {P} tokens, more than this model's prompt_length="
                             f"{fmt.prompt_length} (generation_config.json); shorten it")
        P = fmt.prompt_length
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.mask_token_id
    ids = torch.tensor([[pad] * (P - len(e)) + e for e in enc], dtype=torch.long)  # (B, P)
    if fmt.prompt_length is not None or all(len(e) == P for e in enc):
        return ids, None
    attn = torch.tensor([[False] * (P - len(e)) + [True] * len(e) for e in enc])  # (B, P)
    return ids, attn
