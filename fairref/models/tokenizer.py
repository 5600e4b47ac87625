"""A thin wrapper over a ``tokenizer.json``, and the instruct chat formats (SPEC §7).

``tokenizer.json`` is the one tokenizer format shared by LLaDA, Dream and the toy models;
the Rust ``tokenizers`` library reads it, no ``trust_remote_code`` needed. The special ids
(mask, eos, pad, bos) come from the checkpoint's ``config.json`` when it is beside the
tokenizer (the ids the model was trained with); otherwise they are looked up by their
token strings in the tokenizer (LLaDA ``<|mdm_mask|>``, Dream and toy ``<|mask|>``, ...).

Chat formats (``--chat``): the instruct models were fine-tuned on conversations laid out by
the ``chat_template`` of their ``tokenizer_config.json``. fairref runs no Jinja; it
recognises the two templates and re-implements them as the pure :func:`apply_chat_format`:

- ``"llada"`` (LLaDA-8B-Instruct, a Llama-3 layout): ``<|startoftext|>`` (BOS), then per
  message ``<|start_header_id|>ROLE<|end_header_id|>\\n\\n`` + the content stripped of
  surrounding whitespace + ``<|eot_id|>``, then the assistant header.
- ``"dream"`` (Dream-v0-Instruct-7B, Qwen2 ChatML): per message ``<|im_start|>ROLE\\n`` +
  content + ``<|im_end|>\\n``, a first system turn "You are a helpful assistant." when the
  conversation has none, then ``<|im_start|>assistant\\n``; no BOS.

Checked against the ``chat_template`` of LLaDA-8B-Instruct's tokenizer_config.json and the
Qwen2 template Dream inherits (sources in tests/models/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

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
    #: the chat format of the instruct model ("llada", "dream"), None when it has none
    chat_format: str | None = None

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
    _check_mask_token(tok, ids["mask"], file)
    chat = _chat_format_from(file.parent / "tokenizer_config.json")
    return TextTokenizer(tok, ids["mask"], ids["eos"], ids["pad"], ids["bos"], chat)


def _check_mask_token(tok: Tokenizer, mask: int, file: Path) -> None:
    """The mask id (from config.json or by name) must be the tokenizer's mask token.

    A tokenizer.json that does not belong to the model shows here: the id is past its
    vocabulary, or it names its mask token at another id, or the id holds an ordinary
    text token (no mask token at all)."""
    token = tok.id_to_token(mask)
    if token is None:
        raise ValueError(f"{file}: mask_token_id={mask} (config.json) is not a token of this "
                         f"tokenizer ({tok.get_vocab_size(with_added_tokens=True)} tokens); "
                         "use the tokenizer.json of the same model")
    named = {n: tok.token_to_id(n) for n in _SPECIAL_NAMES["mask"]
             if tok.token_to_id(n) is not None}
    if token in named:
        return
    if named:
        name, i = next(iter(named.items()))
        raise ValueError(f"{file}: config.json's mask_token_id={mask} is the token {token!r}, "
                         f"but this tokenizer's mask token {name!r} is id {i}; the "
                         "tokenizer.json and config.json are of different models")
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    if token not in specials:
        raise ValueError(f"{file}: the tokenizer has no mask token: mask_token_id={mask} is "
                         f"the ordinary token {token!r} and none of {_SPECIAL_NAMES['mask']} "
                         "is a token; use the tokenizer.json of the same model")


def _chat_format_from(config_file: Path) -> str | None:
    """The chat format named by the ``chat_template`` of ``tokenizer_config.json``.

    None when the file is absent, has no template (a base model), or has a template that is
    neither of the two fairref implements (then ``--chat`` says so when it is asked for)."""
    if not config_file.is_file():
        return None
    raw = read_json(config_file, "tokenizer config")
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(raw).__name__}")
    template = raw.get("chat_template")
    if isinstance(template, list):  # HF's list of named templates: the default one
        template = next((t.get("template") for t in template
                         if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(template, str):
        return None
    for family, markers in _CHAT_MARKERS.items():
        if all(m in template for m in markers):
            return family
    return None


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


# --- chat formats ------------------------------------------------------------------------------

#: the special tokens each chat format writes; the tokenizer must have every one as a token
CHAT_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "llada": ("<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "dream": ("<|im_start|>", "<|im_end|>"),
}
#: what identifies each format in a tokenizer_config.json ``chat_template``
_CHAT_MARKERS = {"llada": ("<|start_header_id|>", "<|eot_id|>"),
                 "dream": ("<|im_start|>", "<|im_end|>")}
#: the system turn Qwen2's template (and so Dream's) inserts when there is none
DREAM_DEFAULT_SYSTEM = "You are a helpful assistant."
_ROLES = ("system", "user", "assistant")


def apply_chat_format(family: str, messages: str | Sequence[Mapping[str, str]]) -> str:
    """The prompt text of ``messages`` in the chat format ``family`` ("llada" or "dream"),
    ending with the header of the assistant turn the model is to write.

    ``messages`` is a list of ``{"role": "system"|"user"|"assistant", "content": str}``,
    or a string meaning one user turn. Pure: the text, with the special tokens spelled out;
    :func:`encode_chat` turns it into ids."""
    if family not in CHAT_SPECIAL_TOKENS:
        raise ValueError(f"chat format must be one of {sorted(CHAT_SPECIAL_TOKENS)}, "
                         f"got {family!r}")
    turns = _check_messages(messages)
    if family == "llada":
        # BOS once, then each turn; the template trims the content (Jinja ``| trim``)
        body = "".join(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"
                       for role, content in turns)
        return "<|startoftext|>" + body + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    if turns[0][0] != "system":
        turns = [("system", DREAM_DEFAULT_SYSTEM)] + turns
    body = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return body + "<|im_start|>assistant\n"


def _check_messages(messages: str | Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """``messages`` as (role, content) pairs, or a ``ValueError`` saying what is wrong."""
    if isinstance(messages, str):
        return [("user", messages)]
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a prompt string or a non-empty list of "
                         "{'role': ..., 'content': ...} dicts")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) != {"role", "content"}:
            raise ValueError(f"messages[{i}] must be a dict with exactly the keys 'role' "
                             f"and 'content', got {m!r}")
        if m["role"] not in _ROLES or not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]: role must be one of {list(_ROLES)} and content "
                             f"a string, got role={m['role']!r}")
        turns.append((m["role"], m["content"]))
    return turns


def encode_chat(tok: TextTokenizer, messages: str | Sequence[Mapping[str, str]]) -> list[int]:
    """Ids of ``messages`` in ``tok``'s chat format (its BOS, if the format has one,
    included). ``ValueError`` when the model has no chat format or its tokenizer lacks a
    special token of that format."""
    family = tok.chat_format
    if family is None:
        raise ValueError("this model has no chat format: its tokenizer_config.json has no "
                         "chat_template of LLaDA-Instruct's or Dream/Qwen2's kind (a base or "
                         "toy model); give the prompt as plain text, without --chat")
    absent = [t for t in CHAT_SPECIAL_TOKENS[family] if tok.tokenizer.token_to_id(t) is None]
    if absent:
        raise ValueError(f"the tokenizer lacks the special token(s) {absent} of the "
                         f"{family} chat format; use the instruct model's tokenizer.json")
    return tok.encode(apply_chat_format(family, messages))


# --- prompt encoding -------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFormat:
    """How a model expects its prompts laid out (a ``generation_config.json`` may set both)."""

    add_bos: bool = False  # prepend the BOS id to every prompt (not with chat, see below)
    prompt_length: int | None = None  # left-pad to this fixed length as *visible* tokens
    # lay each prompt out as one user turn of the model's chat format; the format places
    # its own BOS (LLaDA's starts with it, Dream's has none), so add_bos does not apply
    chat: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.add_bos, bool):
            raise ValueError(f"add_bos must be true or false, got {self.add_bos!r}")
        if not isinstance(self.chat, bool):
            raise ValueError(f"chat must be true or false, got {self.chat!r}")
        p = self.prompt_length
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"prompt_length must be an int >= 1 or null, got {p!r}")


def encode_prompts(tok: TextTokenizer, prompts: list[str], fmt: PromptFormat = PromptFormat()
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (B, P) of ``prompts`` in ``fmt``, left-padded, and their attention mask.

    With ``fmt.chat`` each prompt is one user turn of the model's chat format
    (:func:`encode_chat`).

    With ``fmt.prompt_length`` every prompt is left-padded to that length with the pad id
    *as visible tokens* (the format of a model trained on fixed-length padded prompts, like
    the toy models), and the mask is None. Otherwise a batch of unequal prompts is
    left-padded to the longest, as the public loops expect, and the mask (B, P) is False on
    the padding (None when nothing is padded). The pad id is the mask id when the
    tokenizer has none (padded keys are masked out of attention anyway).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if fmt.chat:
        enc = [encode_chat(tok, p) for p in prompts]
    else:
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
