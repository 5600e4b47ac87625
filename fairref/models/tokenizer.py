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
