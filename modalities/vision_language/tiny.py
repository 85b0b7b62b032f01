"""Tiny random VLMs (LLaVA-1.5 and Idefics3 layouts) with a word-level tokenizer, for offline tests and demos.

Their weights are random: they exercise every code path (hooks, capture, VTI, CHAIR, POPE) in seconds,
but their captions are noise, so no steering *effect* measured on them means anything.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from polysteer.errors import PolysteerError
from polysteer.modalities.vision_language.scenes import vocabulary

FAMILIES = ("llava", "idefics3")
IMAGE_SIZE, PATCH_SIZE = 32, 8
_SPECIAL = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>"}
# LLaVA-1.5's conversation format: "USER: <image>\n{prompt} ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {{ m['content'][0]['text'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-casing word-level tokenizer over the synthetic-scene vocabulary, with the VLM image tokens."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(vocabulary())})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", extra_special_tokens=dict(_SPECIAL))


def _text_config(tokenizer) -> LlamaConfig:
    return LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def _vision_kwargs() -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)


def tiny_llava(tokenizer) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """LLaVA-1.5 layout: CLIP vision tower (features from its second-to-last layer, CLS dropped) + Llama."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(vision_config=CLIPVisionConfig(projection_dim=32, **_vision_kwargs()),
                         text_config=_text_config(tokenizer), image_token_index=image_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    return LlavaForConditionalGeneration(config), processor


def tiny_idefics3(tokenizer) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """Idefics3 / SmolVLM layout: SigLIP-style vision tower, pixel-shuffle connector (scale 2) + Llama."""
    config = Idefics3Config(vision_config=Idefics3VisionConfig(**_vision_kwargs()), text_config=_text_config(tokenizer),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
                            pad_token_id=tokenizer.pad_token_id)
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                    max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                  image_seq_len=(IMAGE_SIZE // PATCH_SIZE // 2) ** 2, chat_template=CHAT_TEMPLATE)
    return Idefics3ForConditionalGeneration(config), processor


def tiny_vlm(family: str = "llava", seed: int = 0):
    """``(model, processor)``: a random tiny VLM of ``family`` in eval mode, the same for the same seed."""
    builders = {"llava": tiny_llava, "idefics3": tiny_idefics3}
    if family not in builders:
        raise PolysteerError(f"unknown tiny VLM family {family!r}; use one of {FAMILIES}")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model, processor = builders[family](tokenizer)
    model.config._name_or_path = f"polysteer/tiny-{family}"
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model.eval(), processor
