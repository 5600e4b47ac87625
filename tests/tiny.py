"""Tiny LLaDA / Dream configs shared by the tests.

``tiny_raw`` keeps the *published* config.json key set (tests/models/*.config.json) with
tiny sizes, for the loader and architecture tests; ``tiny_config`` builds a bare config for
tests that only need a random model of either architecture.
"""

import json
from pathlib import Path

from fairref.models import DreamConfig, LLaDAConfig

DATA = Path(__file__).parent / "models"
# Tiny sizes written into the real files' key sets (everything else stays as published).
LLADA_TINY = dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=48,
                  vocab_size=40, embedding_size=48, mask_token_id=39, eos_token_id=38,
                  pad_token_id=38, max_sequence_length=64)
DREAM_TINY = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=48, mask_token_id=47,
                  bos_token_id=46, eos_token_id=46, pad_token_id=46, max_position_embeddings=64)


def tiny_raw(arch: str) -> dict:
    """The published config.json of ``arch`` with the tiny sizes above."""
    name, sizes = {"llada": ("llada-8b-instruct.config.json", LLADA_TINY),
                   "dream": ("dream-v0-instruct-7b.config.json", DREAM_TINY)}[arch]
    return {**json.loads((DATA / name).read_text()), **sizes}


def tiny_config(arch: str, V: int, mask: int, eos: int, pad: int, bos: int | None = None,
                L_max: int = 64):
    """d = 32, 2 blocks, 4 heads (Dream: 2 kv heads, so GQA is exercised), SwiGLU 48."""
    if arch == "llada":
        return LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=48,
                           vocab_size=V, embedding_size=V, mask_token_id=mask,
                           eos_token_id=eos, pad_token_id=pad, max_sequence_length=L_max)
    if arch == "dream":
        return DreamConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                           num_key_value_heads=2, num_hidden_layers=2, vocab_size=V,
                           max_position_embeddings=L_max, mask_token_id=mask,
                           bos_token_id=eos if bos is None else bos, eos_token_id=eos,
                           pad_token_id=pad)
    raise ValueError(f"arch must be 'llada' or 'dream', got {arch!r}")


# --- tiny checkpoint directories laid out like the real instruct repositories -----------------
#
# One per architecture, written at test time: the real file names, the real config.json key
# set, and the real layout of the special tokens. The ordinary vocabulary is the 128 ASCII
# characters (ids 0..127, one token each); the special tokens of the real tokenizer follow in
# their real order, so every special id keeps its offset from the first special token, and the
# embedding has as many unused rows above them as the real one. Sources: tests/models/README.md.

ASCII = 128
#: LLaDA-8B-Instruct, from <|startoftext|> = 126080 up; the embedding ends at 126464
LLADA_SPECIALS = (["<|startoftext|>", "<|endoftext|>", "[CLS]", "[gMASK]"]
                  + [f"<|reserved_token_{i}|>" if i != 252 else "<|mdm_mask|>" for i in range(256)]
                  + ["<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>",
                     "<|number_start|>", "<|number_end|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eot_id|>"])
LLADA_FIRST_SPECIAL, LLADA_EMBEDDING = 126080, 126464
#: Dream-v0-Instruct-7B, from Qwen2's <|endoftext|> = 151643 up; the embedding ends at 152064
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>", "<|beginoftext|>", "<|mask|>"]
DREAM_FIRST_SPECIAL, DREAM_EMBEDDING = 151643, 152064

#: the chat_template of GSAI-ML/LLaDA-8B-Instruct's tokenizer_config.json (data, verbatim)
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")
#: the Qwen2 ChatML template (no tools) that Dream-v0-Instruct inherits
DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_special_id(arch: str, token: str) -> int:
    """The tiny id of a special token: ASCII + its offset in the real vocabulary."""
    specials = LLADA_SPECIALS if arch == "llada" else DREAM_SPECIALS
    return ASCII + specials.index(token)


def tiny_instruct_raw(arch: str) -> dict:
    """tiny_raw with the vocabulary and special ids of the tiny instruct tokenizer."""
    if arch == "llada":
        V = ASCII + LLADA_EMBEDDING - LLADA_FIRST_SPECIAL
        eos = tiny_special_id("llada", "<|endoftext|>")
        return {**tiny_raw("llada"), "vocab_size": V, "embedding_size": V, "eos_token_id": eos,
                "pad_token_id": eos, "mask_token_id": tiny_special_id("llada", "<|mdm_mask|>")}
    V = ASCII + DREAM_EMBEDDING - DREAM_FIRST_SPECIAL
    eos = tiny_special_id("dream", "<|endoftext|>")
    return {**tiny_raw("dream"), "vocab_size": V, "bos_token_id": eos, "eos_token_id": eos,
            "pad_token_id": eos, "mask_token_id": tiny_special_id("dream", "<|mask|>")}


def tiny_instruct_tokenizer(arch: str, drop: tuple[str, ...] = ()):
    """A character-level tokenizers.Tokenizer with the real special tokens at the tiny ids.

    ``drop`` leaves special tokens out (their ids hold ordinary placeholder tokens), for
    the tests of a tokenizer that lacks one."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = LLADA_SPECIALS if arch == "llada" else DREAM_SPECIALS
    vocab = {chr(i): i for i in range(ASCII)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=chr(0)))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    for i, s in enumerate(specials):  # one at a time: ids follow the real order
        if s in drop:
            tok.add_tokens([f"dropped{i}"])  # an ordinary token keeps the row
        else:
            tok.add_special_tokens([s])
    return tok


def _tokenizer_config(arch: str) -> dict:
    """tokenizer_config.json with the keys that matter here, as the real files have them."""
    specials = LLADA_SPECIALS if arch == "llada" else DREAM_SPECIALS
    decoder = {str(ASCII + i): {"content": s, "lstrip": False, "normalized": False,
                                "rstrip": False, "single_word": False, "special": True}
               for i, s in enumerate(specials)}
    if arch == "llada":
        return {"add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": decoder,
                "bos_token": "<|startoftext|>", "chat_template": LLADA_CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    return {"added_tokens_decoder": decoder, "bos_token": "<|beginoftext|>",
            "chat_template": DREAM_CHAT_TEMPLATE, "eos_token": "<|endoftext|>",
            "mask_token": "<|mask|>", "pad_token": "<|endoftext|>"}


def _generation_config(arch: str, raw: dict) -> dict:
    """generation_config.json: Dream's as published (tiny ids); LLaDA's as HF writes it."""
    if arch == "llada":
        return {"_from_model_config": True, "bos_token_id": ASCII,
                "eos_token_id": raw["eos_token_id"], "pad_token_id": raw["pad_token_id"],
                "transformers_version": raw["transformers_version"]}
    return {"_from_model_config": True, "alg": "origin", "alg_temp": None,
            "bos_token_id": raw["bos_token_id"], "eos_token_id": raw["eos_token_id"],
            "eps": 0.001, "mask_token_id": None, "output_history": False,
            "pad_token_id": raw["pad_token_id"], "steps": 512, "temperature": 0.0,
            "top_k": None, "top_p": None, "transformers_version": "4.46.2"}


def write_tiny_instruct(path: Path, arch: str, n_shards: int = 3, seed: int = 0,
                        generation_config: bool = True, chat_template: bool = True,
                        drop: tuple[str, ...] = ()) -> Path:
    """Write a tiny instruct checkpoint directory of ``arch`` laid out like the real one:
    config.json, model-0000K-of-0000N.safetensors (bfloat16) + model.safetensors.index.json,
    tokenizer.json, tokenizer_config.json and (optionally) generation_config.json.

    Written with safetensors and json directly, not with fairref's save."""
    import torch
    from safetensors.torch import save_file

    from fairref.models import config_from_dict, random_model

    raw = tiny_instruct_raw(arch)
    state = random_model(config_from_dict(raw), seed=seed, std=0.3).state_dict()
    names = sorted(state)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    weight_map, total = {}, 0
    for k in range(n_shards):
        part = {n: state[n].to(torch.bfloat16).contiguous() for n in names[k::n_shards]}
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tiny_instruct_tokenizer(arch, drop).save(str(path / "tokenizer.json"))
    tok_config = _tokenizer_config(arch)
    if not chat_template:
        del tok_config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    if generation_config:
        (path / "generation_config.json").write_text(
            json.dumps(_generation_config(arch, raw), indent=2))
    return path
