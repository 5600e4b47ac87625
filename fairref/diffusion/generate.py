"""The one sampling entry point (SPEC §2): ``generate(model, prompt_ids, settings)``.

Everything that samples — the CLI, Stage I probing, the on-policy metrics, the toy report,
the paper scripts — calls :func:`generate`. It is the only place that chooses the LLaDA or
the Dream generation loop for a model and the only place that holds their defaults.

:class:`SamplerSettings` is one frozen record for both loops. Each field belongs to the
loops that use it (:data:`LLADA_FIELDS`, :data:`DREAM_FIELDS`); a field the model's loop does
not use must keep its default, otherwise :func:`generate` refuses the settings rather than
silently ignoring them. The same rule applies to a model's ``generation_config.json``
(:func:`load_generation_config`): a key that its sampler does not use is an error naming
it. That file may also carry the prompt format (``add_bos``, ``prompt_length``,
:class:`fairref.models.tokenizer.PromptFormat`).

:func:`complete` goes from text to text: it encodes prompts in the model's format, samples
and decodes each answer up to its first EOS.

Legend: B batch, P prompt length, G generation length, L = P + G.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fairref.diffusion.dream_sampler import ALGS, dream_generate
from fairref.diffusion.llada_sampler import REMASKING, llada_generate
from fairref.diffusion.sampler import check_positive_int
from fairref.files import read_json
from fairref.models.tokenizer import PromptFormat, TextTokenizer, encode_prompts


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler settings of SPEC §2 for both loops. The defaults are small (16 tokens in 8
    greedy steps, one block); a model's own settings come from its generation_config.json
    (:func:`load_generation_config`; the LLaDA toy ships blocks of 4)."""

    steps: int = 8  # total denoising steps T (both loops)
    gen_length: int = 16  # G, tokens generated after the prompt (both loops)
    temperature: float = 0.0  # 0 = greedy (both loops)
    block_length: int | None = None  # LLaDA: semi-autoregressive block; None = G (one block)
    remasking: str = "low_confidence"  # LLaDA: "low_confidence" or "random"
    cfg_scale: float = 0.0  # LLaDA: classifier-free guidance scale (0 = off)
    alg: str = "maskgit_plus"  # Dream: origin | maskgit_plus | topk_margin | entropy
    alg_temp: float | None = None  # Dream: > 0 samples which positions to commit
    eps: float = 1e-3  # Dream: last timestep of linspace(1, eps, T + 1)
    top_p: float | None = None  # Dream: nucleus filter of the token distribution
    top_k: int | None = None  # Dream: top-k filter of the token distribution

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive_int("gen_length", self.gen_length)
        if self.block_length is not None:
            check_positive_int("block_length", self.block_length)
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {REMASKING}, got {self.remasking!r}")
        if self.alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}, got {self.alg!r}")

    def unused_by(self, family: str) -> list[str]:
        """Fields set away from their default that the ``family`` loop does not use."""
        used = LLADA_FIELDS if family == "llada" else DREAM_FIELDS
        return [f.name for f in dataclasses.fields(self)
                if f.name not in used and getattr(self, f.name) != f.default]


#: the fields each loop reads
LLADA_FIELDS = frozenset({"steps", "gen_length", "temperature", "block_length", "remasking",
                          "cfg_scale"})
DREAM_FIELDS = frozenset({"steps", "gen_length", "temperature", "alg", "alg_temp", "eps",
                          "top_p", "top_k"})
#: prompt-format keys a generation_config.json may carry besides the sampler's
PROMPT_KEYS = frozenset(f.name for f in dataclasses.fields(PromptFormat))
#: keys Hugging Face writes into every generation_config.json (and the published Dream
#: file's output flag): descriptive, they change no sampler decision, so they are accepted
HF_DESCRIPTIVE_KEYS = frozenset({"_from_model_config", "transformers_version", "bos_token_id",
                                 "eos_token_id", "pad_token_id", "mask_token_id",
                                 "output_history", "return_dict_in_generate"})


def sampler_family(model) -> str:
    """``"dream"`` for a Dream model (its public loop), ``"llada"`` for everything else.

    A wrapper that sets ``__wrapped__`` (e.g. :class:`fairref.eval.logit_cache.LogitCache`)
    is judged by the model it wraps."""
    from fairref.models.dream import DreamModel

    while getattr(model, "__wrapped__", None) is not None:
        model = model.__wrapped__
    return "dream" if isinstance(model, DreamModel) else "llada"


def generate(model, prompt_ids: Tensor, settings: SamplerSettings = SamplerSettings(), *,
             attention_mask: Tensor | None = None, generator: torch.Generator | None = None,
             record: bool = False):
    """Sample ``settings.gen_length`` tokens after ``prompt_ids`` (B, P) with the model's loop.

    ``attention_mask`` (B, P) marks real prompt tokens (None: all real); randomness comes
    only from ``generator``. Returns the final ids (B, L), or ``(ids, trace)`` when
    ``record`` (SPEC §2 "Trace").
    """
    family = sampler_family(model)
    unused = settings.unused_by(family)
    if unused:
        raise ValueError(f"SamplerSettings {', '.join(unused)}: not used by the {family} "
                         f"sampler; leave them at their defaults for this model")
    s = settings
    common = dict(temperature=s.temperature, generator=generator, record=record,
                  attention_mask=attention_mask)
    if family == "dream":
        return dream_generate(model, prompt_ids, s.steps, s.gen_length, alg=s.alg,
                              alg_temp=s.alg_temp, eps=s.eps, top_p=s.top_p, top_k=s.top_k,
                              **common)
    block = s.block_length if s.block_length is not None else s.gen_length
    return llada_generate(model, prompt_ids, s.steps, s.gen_length, block,
                          cfg_scale=s.cfg_scale, remasking=s.remasking, **common)


def load_generation_config(path: str | Path, family: str) -> tuple[SamplerSettings, PromptFormat]:
    """Sampler settings and prompt format from ``path/generation_config.json`` (or the file).

    Missing file: the defaults. A key the ``family`` sampler does not use, or that is
    neither a sampler, a prompt-format nor a descriptive Hugging Face key
    (:data:`HF_DESCRIPTIVE_KEYS`), is an error naming it.
    """
    if family not in ("llada", "dream"):
        raise ValueError(f"family must be 'llada' or 'dream', got {family!r}")
    path = Path(path)
    file = path if path.suffix == ".json" else path / "generation_config.json"
    if not file.is_file():
        return SamplerSettings(), PromptFormat()
    raw = read_json(file, "generation config")
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: must hold a JSON object, got {type(raw).__name__}")
    used = LLADA_FIELDS if family == "llada" else DREAM_FIELDS
    other = DREAM_FIELDS if family == "llada" else LLADA_FIELDS
    bad = [k for k in raw if k not in used and k not in PROMPT_KEYS
           and k not in HF_DESCRIPTIVE_KEYS]
    if bad:
        k = bad[0]
        why = (f"a {'Dream' if family == 'llada' else 'LLaDA'} sampler option"
               if k in other else "not a sampler or prompt-format key")
        raise ValueError(f"{file}: key {k!r} is {why}; the {family} sampler reads "
                         f"{sorted(used)} and the prompt format {sorted(PROMPT_KEYS)}: "
                         f"remove or rename it")
    try:
        settings = SamplerSettings(**{k: v for k, v in raw.items() if k in used})
        fmt = PromptFormat(**{k: v for k, v in raw.items() if k in PROMPT_KEYS})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from e
    return settings, fmt


def complete(model, tokenizer: TextTokenizer, prompts: list[str],
             settings: SamplerSettings = SamplerSettings(), fmt: PromptFormat = PromptFormat(),
             *, generator: torch.Generator | None = None) -> list[str]:
    """Text in, text out: encode ``prompts`` in ``fmt``, sample, decode up to the first EOS."""
    ids, attn = encode_prompts(tokenizer, prompts, fmt)  # (B, P), (B, P) or None
    if (ids == model.mask_token_id).any():
        raise ValueError("a prompt contains the mask token; the sampler would treat it as a "
                         "position to generate: remove it from the prompt")
    with torch.no_grad():
        x = generate(model, ids, settings, attention_mask=attn, generator=generator)
    out = []
    for row in x[:, ids.shape[1]:].tolist():  # (G,) generated ids per prompt
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode(row))
    return out
