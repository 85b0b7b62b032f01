"""Tiny random models and a word-level tokenizer for fast, offline tests."""

from __future__ import annotations

import string

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = sorted(set(
    "the a an of to and in is was it you i we they he she my your our this that what how why who when where "
    "day dinner food park book speak weather hobby friend city job time note people happy train week life "
    "painting afternoon coffee school wedding bride groom ocean sea wave ship fish beach love party cake music "
    "tell me about describe write good best favorite short two new old big small . , ! ? "
    "le la les est et je vous une des pour".split()
) | set(string.ascii_lowercase))

TINY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                       num_attention_heads=4, num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                           num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                      num_attention_heads=4, num_key_value_heads=2)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                   num_attention_heads=4, num_key_value_heads=4)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=3, n_head=4, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                             num_hidden_layers=3, num_attention_heads=4)),
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def tiny_model(family: str = "llama", seed: int = 0):
    config_name, model_name, kwargs = TINY_CONFIGS[family]
    config = getattr(transformers, config_name)(vocab_size=len(WORDS) + 4, pad_token_id=0, bos_token_id=2,
                                                eos_token_id=3, **kwargs)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()
