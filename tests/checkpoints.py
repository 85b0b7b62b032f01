"""Tiny random checkpoints written in the on-disk layout of their published hub repositories.

Each writer fills a folder as ``git clone``/``snapshot_download`` of the real repository would: config and
generation config, the tokenizer files that repository ships (``vocab.json``/``merges.txt``, ``tokenizer.model``,
``tokenizer.json``, ``tokenizer_config.json`` naming the published tokenizer class), processor files, and weights
as safetensors shards with ``model.safetensors.index.json``. Only the sizes are tiny and the weights random.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from tiny import TINY_CONFIGS, WORDS

SHARD = "60KB"  # small enough that every model is split into several shards with an index
CORPUS = [" ".join(WORDS), "tell me about the day", "what is the weather", "the ocean and the sea", "the city"]
MUSIC_WORDS = "lofi piano rock jazz ambient guitar drums bass synth beat slow fast happy sad calm upbeat a the with"

# family: (tiny config key, tokenizer kind, published tokenizer_class or None, tokenizer files the repo ships)
TEXT_FAMILIES = {
    "smollm2": ("llama", "bpe", "GPT2Tokenizer", {"vocab.json", "merges.txt", "tokenizer.json"}),
    "gpt2": ("gpt2", "bpe", None, {"vocab.json", "merges.txt", "tokenizer.json"}),
    "gpt_neox": ("gpt_neox", "bpe", "GPTNeoXTokenizer", {"tokenizer.json"}),
    "qwen2": ("qwen2", "bpe", "Qwen2Tokenizer", {"vocab.json", "merges.txt", "tokenizer.json"}),
    "mistral": ("mistral", "spm", "LlamaTokenizer", {"tokenizer.model", "tokenizer.json"}),
    "gemma": ("gemma", "spm", "GemmaTokenizer", {"tokenizer.model", "tokenizer.json"}),
    "gemma2": ("gemma2", "spm", "GemmaTokenizer", {"tokenizer.model", "tokenizer.json"}),
    "opt": ("opt", "bpe", "GPT2Tokenizer", {"vocab.json", "merges.txt"}),  # facebook/opt-*: no tokenizer.json
    "bloom": ("bloom", "bpe", "BloomTokenizerFast", {"tokenizer.json"}),
    "falcon": ("falcon", "bpe", "PreTrainedTokenizerFast", {"tokenizer.json"}),
    "gptj": ("gptj", "bpe", "GPT2Tokenizer", {"vocab.json", "merges.txt", "tokenizer.json"}),
}
_CONFIGS = {**TINY_CONFIGS, "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
    head_dim=8))}
_SPECIALS = {"opt": dict(bos_token="</s>", eos_token="</s>", unk_token="</s>", pad_token="<pad>"),
             "bloom": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")}
_ENDOFTEXT = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _sentencepiece(folder: Path, words: str, kind: str = "bpe", size: int = 320) -> Path:
    """Train a tiny SentencePiece model (``tokenizer.model`` / ``spiece.model``) on ``words``."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join([words] * 4))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=size,
                                   model_type=kind, byte_fallback=kind == "bpe", character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2, bos_id=1 if kind == "bpe" else -1,
                                   eos_id=2 if kind == "bpe" else 1, unk_id=0 if kind == "bpe" else 2,
                                   pad_id=-1 if kind == "bpe" else 0)
    corpus.unlink()
    (folder / "sp.vocab").unlink()
    return folder / "sp.model"


def _byte_level_bpe(folder: Path, specials: dict) -> None:
    """A byte-level BPE trained on the test words, saved as ``vocab.json`` + ``merges.txt`` in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=sorted(set(specials.values())),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.model.save(str(folder))


def write_text_tokenizer(folder: Path, family: str):
    """The family's published tokenizer, built from tiny vocab files and saved as its repository ships it."""
    _, kind, cls_name, files = TEXT_FAMILIES[family]
    build = folder / ".build"
    build.mkdir(parents=True)
    specials = _SPECIALS.get(family, _ENDOFTEXT)
    if kind == "spm":
        shutil.move(_sentencepiece(build, " ".join(WORDS)), build / "tokenizer.model")
        tokenizer = getattr(transformers, cls_name).from_pretrained(build)
    else:
        _byte_level_bpe(build, specials)
        tokenizer = transformers.GPT2Tokenizer.from_pretrained(build, **specials)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class") if cls_name is None else config.update(tokenizer_class=cls_name)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    for name in files - {"tokenizer.json"}:
        shutil.copy(build / name, folder / name)
    if "tokenizer.json" not in files:
        (folder / "tokenizer.json").unlink()
    shutil.rmtree(build)
    return tokenizer


def _save(model, folder: Path, **ids) -> None:
    """Sharded safetensors with an index, config.json and generation_config.json, as the hub repos hold them."""
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder, max_shard_size=SHARD)
    assert (folder / "model.safetensors.index.json").is_file() and (folder / "generation_config.json").is_file()


def write_text_checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    """A causal LM of ``family`` (see :data:`TEXT_FAMILIES`) in its hub repository's layout."""
    key = TEXT_FAMILIES[family][0]
    tokenizer = write_text_tokenizer(folder, family)
    config_name, model_name, kwargs = _CONFIGS[key]
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = getattr(transformers, config_name)(vocab_size=len(tokenizer), **ids, **kwargs)
    torch.manual_seed(seed)
    _save(getattr(transformers, model_name)(config).eval(), folder, **ids)
    return folder


def _t5_tokenizer(folder: Path):
    """musicgen's T5 tokenizer files: ``spiece.model`` (SentencePiece unigram) and what T5Tokenizer saves."""
    build = folder / ".build"
    build.mkdir(parents=True)
    shutil.move(_sentencepiece(build, MUSIC_WORDS, kind="unigram", size=40), build / "spiece.model")
    tokenizer = transformers.T5Tokenizer.from_pretrained(build, extra_ids=100, model_max_length=512)
    shutil.copy(build / "spiece.model", folder / "spiece.model")
    shutil.rmtree(build)
    return tokenizer


def write_musicgen_transformers(folder: Path, seed: int = 0) -> None:
    """facebook/musicgen-small's transformers files: config.json with text_encoder/audio_encoder/decoder,
    generation_config.json, preprocessor_config.json (EnCodec feature extractor), the T5 tokenizer, shards."""
    from polysteer.modalities.music.models import _TINY, _init_codebooks

    t = _TINY
    tokenizer = _t5_tokenizer(folder)
    text = transformers.T5Config(vocab_size=len(tokenizer), d_model=t["dim"], d_kv=8, d_ff=2 * t["dim"],
                                 num_layers=1, num_heads=t["heads"])
    audio = transformers.EncodecConfig(sampling_rate=t["sample_rate"], upsampling_ratios=t["ratios"],
                                       codebook_size=t["card"], target_bandwidths=[1.2], hidden_size=t["dim"],
                                       num_filters=4, num_lstm_layers=1)
    decoder = transformers.MusicgenDecoderConfig(
        vocab_size=t["card"], hidden_size=t["dim"], num_hidden_layers=t["layers"], ffn_dim=2 * t["dim"],
        num_attention_heads=t["heads"], num_codebooks=t["codebooks"], pad_token_id=t["card"],
        bos_token_id=t["card"], max_position_embeddings=4096)
    torch.manual_seed(seed)
    model = transformers.MusicgenForConditionalGeneration(
        transformers.MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)).eval()
    _init_codebooks(model.audio_encoder)
    # the published generation config: sampling with top-k 250, CFG 3, 1500 tokens (30 s)
    _save(model, folder, decoder_start_token_id=t["card"], pad_token_id=t["card"], do_sample=True, top_k=250,
          guidance_scale=3.0, max_length=1500)
    # the repo has preprocessor_config.json and the tokenizer files, no processor_config.json
    transformers.EncodecFeatureExtractor(sampling_rate=t["sample_rate"], feature_size=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def audiocraft_configs(dim: int = 16, card: int = 64, codebooks: int = 4, rate: int = 16000) -> tuple[dict, dict]:
    """The ``xp.cfg`` of a MusicGen LM and of its EnCodec, with the keys of audiocraft's released configs
    (scaled down; the text conditioner is a lookup table, since T5 would be fetched from the hub)."""
    lm = {
        "device": "cpu", "dtype": "float32", "lm_model": "transformer_lm", "dataset": {"segment_duration": 30},
        "transformer_lm": {
            "dim": dim, "num_heads": 2, "num_layers": 3, "hidden_scale": 4, "n_q": codebooks, "card": card,
            "dropout": 0.0, "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False,
            "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True, "custom": False,
            "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
            "positional_embedding": "sin", "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1,
            "two_step_cfg": False},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(range(codebooks)), "flatten_first": 0,
                                                             "empty_initial": 0}},
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
        "attribute_dropout": {"args": {"active_on_eval": False}, "text": {}, "wav": {}},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                  "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "lut", "lut": {"n_bins": 64, "dim": dim, "tokenizer": "noop"}}},
    }
    codec = {
        "device": "cpu", "compression_model": "encodec", "sample_rate": rate, "channels": 1,
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": rate, "channels": 1,
                    "causal": False, "renormalize": False},
        "seanet": {"dimension": dim, "channels": 1, "causal": False, "n_filters": 4, "n_residual_layers": 1,
                   "ratios": [8, 5, 4, 2], "activation": "ELU", "activation_params": {"alpha": 1.0},
                   "norm": "weight_norm", "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
                   "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant", "true_skip": True,
                   "compress": 2, "lstm": 2, "disable_norm_outer_blocks": 0, "encoder": {},
                   "decoder": {"trim_right_ratio": 1.0}},
        "rvq": {"n_q": codebooks, "q_dropout": False, "bins": card, "decay": 0.99, "kmeans_init": True,
                "kmeans_iters": 50, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
                "orthogonal_reg_active_codes_only": False},
    }
    return lm, codec


def write_musicgen_audiocraft(folder: Path, seed: int = 0) -> None:
    """audiocraft's files in the same repository: ``state_dict.bin`` (LM) and ``compression_state_dict.bin``
    (EnCodec), each ``torch.save({'best_state', 'xp.cfg' (YAML), 'version', 'exported'})`` as
    ``audiocraft.utils.export`` writes them. Built with audiocraft's own builders from those configs."""
    import audiocraft
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from polysteer.modalities.music.models import _tone_frames

    lm_cfg, codec_cfg = (OmegaConf.create(cfg) for cfg in audiocraft_configs())
    torch.manual_seed(seed)
    codec = builders.get_compression_model(codec_cfg).eval()
    codec.quantizer(_tone_frames(codec.encoder, codec.sample_rate), codec.frame_rate)  # k-means codebook init
    lm = builders.get_lm_model(lm_cfg).eval()
    for name, model, cfg in (("compression_state_dict.bin", codec, codec_cfg), ("state_dict.bin", lm, lm_cfg)):
        torch.save({"best_state": model.state_dict(), "xp.cfg": OmegaConf.to_yaml(cfg),
                    "version": audiocraft.__version__, "exported": True}, folder / name)


def _save_vlm(model, processor, folder: Path, **processor_config) -> None:
    """Weights, then the processor as the published repos hold it: ``preprocessor_config.json`` (the image
    processor alone), ``processor_config.json`` (the processor's own settings), ``chat_template.json`` and the
    tokenizer files (transformers 5 would nest the image processor in processor_config.json instead)."""
    tokenizer = processor.tokenizer
    model.config._name_or_path = ""
    _save(model, folder, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
          pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor_config["processor_class"] = type(processor).__name__
    (folder / "processor_config.json").write_text(json.dumps(processor_config, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}, indent=2))
    assert (folder / "preprocessor_config.json").is_file() and not (folder / "chat_template.jinja").exists()


def write_llava(folder: Path, seed: int = 0) -> None:
    """llava-hf/llava-1.5-7b-hf: LlavaForConditionalGeneration (CLIP tower, features from layer -2, CLS
    dropped) with CLIPImageProcessor, LlavaProcessor (patch size, one extra image token), sharded weights."""
    from polysteer.modalities.vision_language import tiny
    from polysteer.modalities.vision_language.tiny import tiny_vlm

    _save_vlm(*tiny_vlm("llava", seed), folder, image_token="<image>", num_additional_image_tokens=1,
              patch_size=tiny.PATCH_SIZE, vision_feature_select_strategy="default")


def write_idefics3(folder: Path, scale_factor: int = 2, seed: int = 0) -> None:
    """HuggingFaceM4/Idefics3-8B-Llama3 (``scale_factor`` 2) or HuggingFaceTB/SmolVLM-* (4): Idefics3 with the
    published processor settings, image splitting on (``size`` 2x the tower's ``max_image_size`` gives a 2x2
    grid of tiles plus the global image) and ``image_seq_len`` fixed by the pixel-shuffle scale."""
    from polysteer.modalities.vision_language import tiny

    tokenizer = tiny.tiny_tokenizer()
    config = transformers.Idefics3Config(
        vision_config=transformers.Idefics3VisionConfig(**tiny._vision_kwargs()),
        text_config=tiny._text_config(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor, pad_token_id=tokenizer.pad_token_id)
    images = transformers.Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * tiny.IMAGE_SIZE},
                                                 max_image_size={"longest_edge": tiny.IMAGE_SIZE})
    patches = tiny.IMAGE_SIZE // tiny.PATCH_SIZE // scale_factor
    processor = transformers.Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=patches ** 2,
                                               chat_template=tiny.CHAT_TEMPLATE)
    torch.manual_seed(seed)
    _save_vlm(transformers.Idefics3ForConditionalGeneration(config).eval(), processor, folder,
              image_seq_len=patches ** 2)


def write_openclip(folder: Path, seed: int = 0) -> dict:
    """An open_clip ViT in the hub layout (laion/CLIP-ViT-*, timm/*): ``open_clip_config.json``
    (``model_cfg`` + ``preprocess_cfg``), ``open_clip_model.safetensors``, and the pickled duplicate
    ``open_clip_pytorch_model.bin`` those repos also carry (junk here: it must never be read)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                                 "patch_size": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in CLIP(**model_cfg).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess_cfg}, indent=2))
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint: open_clip must read the safetensors")
    return state
