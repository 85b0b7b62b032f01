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
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                                                 num_attention_heads=4, word_embed_proj_dim=32)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=3, n_head=4)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                         new_decoder_architecture=False, multi_query=True)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=128)),
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


def random_sae(d_in: int = 32, d_sae: int = 64, architecture: str = "topk", k: int | None = 4, seed: int = 0,
               hook_point: str | None = "text.blocks.1.resid_post"):
    """A seeded SAE with random encoder/decoder and biases that let some latents fire."""
    from polysteer.plugins.sae import SAE

    sae = SAE(d_in, d_sae, architecture, k if architecture == "topk" else None,
              metadata={"hook_name": hook_point} if hook_point else {})
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.3)
        sae.b_dec.normal_(0, 0.1)
        if sae.threshold is not None:
            sae.threshold.fill_(0.2)
    return sae


def peaked_llama():
    """A tiny llama whose output distribution is not flat (logits x 10), so steering changes samples visibly."""
    model = tiny_model("llama", seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    return model


def axis_sae(d: int = 16, architecture: str = "standard", hook_point: str | None = "text.blocks.1.resid_post"):
    """Latent ``j < d`` reads and writes +axis ``j``, latent ``d + j`` the -axis: ``encode(h) = relu([h, -h])``."""
    from polysteer.plugins.sae import SAE

    sae = SAE(d, 2 * d, architecture, k=d if architecture == "topk" else None,
              metadata={"hook_name": hook_point} if hook_point else {})
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def fuzz_settings(examples: int):
    """Hypothesis settings for the parser fuzz tests: derandomized in the suite, so CI is reproducible;
    ``POLYSTEER_FUZZ_EXAMPLES=N`` runs N random examples instead (for a long local fuzz)."""
    import os

    from hypothesis import settings

    wanted = os.environ.get("POLYSTEER_FUZZ_EXAMPLES")
    return settings(max_examples=int(wanted or examples), derandomize=wanted is None, database=None)
