"""Tiny random ``transformers`` models, one or more per mapped family, shared by the tests of ``zoo.hf``.

Built from configs (nothing is downloaded), every weight random: norms at ones and biases at zeros
would hide a swapped or missing mapping.
"""

import torch

TOL = 1e-4
VOCAB = 128


def randomize(model: torch.nn.Module, *, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = p.ndim == 1 and name.endswith("weight")
            p.normal_(1.0 if is_norm_weight else 0.0, std)
    return model


def hf_model(config_cls: str, model_cls: str, **kwargs) -> torch.nn.Module:
    import transformers

    config = getattr(transformers, config_cls)(vocab_size=VOCAB, **kwargs)
    config._attn_implementation = "eager"
    return randomize(getattr(transformers, model_cls)(config)).eval()


def deepseek(**kwargs) -> torch.nn.Module:
    """A DeepSeek-V3 whose routers' correction biases are random too (a buffer, which ``randomize`` leaves at zero)."""
    model = hf_model("DeepseekV3Config", "DeepseekV3ForCausalLM", **DEEPSEEK, **kwargs)
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.1)
    return model


def untie(model: torch.nn.Module) -> torch.nn.Module:
    """T5 v1.1 keeps its head apart from the embedding (transformers 5 ties them when built from a config)."""
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.1)
    return model


LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FALCON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
#: head_dim 16 but scores scaled by 24 ** -0.5, caps low enough to bite, the window shorter than the test's tokens
GEMMA = dict(LLAMA, head_dim=16, query_pre_attn_scalar=24, sliding_window=4)
#: MLA with a rotary part of 8 channels; 8 experts in 4 groups, 2 groups and 3 experts per token, 2 shared experts
DEEPSEEK = dict(
    hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
    kv_lora_rank=24, qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=16, n_routed_experts=8, n_group=4, topk_group=2,
    num_experts_per_tok=3, n_shared_experts=2, routed_scaling_factor=2.5,
)
T5 = dict(d_model=64, d_ff=96, num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)

#: case name -> builder of its tiny transformers model
CASES = {
    "llama": lambda: hf_model("LlamaConfig", "LlamaForCausalLM", **LLAMA, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
    # scaled RoPE: the training length is short, so the tokens of a test reach the stretched range
    "llama-3.1-rope": lambda: hf_model(
        "LlamaConfig", "LlamaForCausalLM", **LLAMA, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "llama-yarn-rope": lambda: hf_model(
        "LlamaConfig", "LlamaForCausalLM", **LLAMA, max_position_embeddings=32,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 8},
    ),
    "llama-linear-rope": lambda: hf_model(
        "LlamaConfig", "LlamaForCausalLM", **LLAMA, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}
    ),
    "llama-biases-tied-wide-heads": lambda: hf_model(
        "LlamaConfig", "LlamaForCausalLM", **LLAMA, head_dim=32, attention_bias=True, mlp_bias=True, tie_word_embeddings=True
    ),
    "mistral-window-4": lambda: hf_model("MistralConfig", "MistralForCausalLM", **LLAMA, sliding_window=4),
    "mixtral-window-6": lambda: hf_model(
        "MixtralConfig", "MixtralForCausalLM", **LLAMA, num_local_experts=4, num_experts_per_tok=2, sliding_window=6
    ),
    "qwen2": lambda: hf_model("Qwen2Config", "Qwen2ForCausalLM", **LLAMA, tie_word_embeddings=True),
    "qwen3-window-5": lambda: hf_model(
        "Qwen3Config", "Qwen3ForCausalLM", **LLAMA, head_dim=24, use_sliding_window=True, sliding_window=5, max_window_layers=0
    ),
    "qwen3-biases-tied": lambda: hf_model("Qwen3Config", "Qwen3ForCausalLM", **LLAMA, head_dim=16, attention_bias=True, tie_word_embeddings=True),
    "olmo2": lambda: hf_model("Olmo2Config", "Olmo2ForCausalLM", **LLAMA, rms_norm_eps=1e-5),
    # Gemma 2B's shape: one KV head, heads wider than hidden_size / num_attention_heads
    "gemma-mqa-wide-heads": lambda: hf_model("GemmaConfig", "GemmaForCausalLM", **{**LLAMA, "num_key_value_heads": 1}, head_dim=32),
    "gemma-biases": lambda: hf_model(
        "GemmaConfig", "GemmaForCausalLM", **{**LLAMA, "num_key_value_heads": 4}, head_dim=16, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
    ),
    "gemma2-window-4-capped": lambda: hf_model(
        "Gemma2Config", "Gemma2ForCausalLM", **GEMMA, attn_logit_softcapping=2.0, final_logit_softcapping=3.0
    ),
    # two local layers to one global, each type with its own RoPE (the global one scaled)
    "gemma3-local-rope": lambda: hf_model(
        "Gemma3TextConfig", "Gemma3ForCausalLM", **{**GEMMA, "num_hidden_layers": 3}, final_logit_softcapping=5.0,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0}, "full_attention": {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}},
    ),
    # a query rank, a dense first layer, interleaved RoPE pairs
    "deepseek-v3": lambda: deepseek(q_lora_rank=20, first_k_dense_replace=1),
    # no query rank, every layer MoE, RoPE halves, biases, YaRN whose mscale_all_dim scales every score
    "deepseek-v3-yarn-biases": lambda: deepseek(
        q_lora_rank=None, first_k_dense_replace=0, rope_interleave=False, attention_bias=True, norm_topk_prob=False,
        max_position_embeddings=32, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 8, "mscale": 1.0, "mscale_all_dim": 0.7},
    ),
    "gpt2": lambda: hf_model("GPT2Config", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
    "bloom-6-heads": lambda: hf_model("BloomConfig", "BloomForCausalLM", hidden_size=48, n_layer=2, n_head=6),
    "falcon-7b-style": lambda: hf_model("FalconConfig", "FalconForCausalLM", **FALCON, multi_query=True, parallel_attn=True, bias=False),
    "falcon-sequential-mha-bias": lambda: hf_model("FalconConfig", "FalconForCausalLM", **FALCON, multi_query=False, parallel_attn=False, bias=True),
    "falcon-grouped": lambda: hf_model(
        "FalconConfig", "FalconForCausalLM", **FALCON, num_kv_heads=2, new_decoder_architecture=True, num_ln_in_parallel_attn=1
    ),
    "falcon-40b-style": lambda: hf_model("FalconConfig", "FalconForCausalLM", **FALCON, num_kv_heads=2, new_decoder_architecture=True),
    "gpt-neox": lambda: hf_model(
        "GPTNeoXConfig", "GPTNeoXForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96
    ),
    "gpt-neox-sequential-no-attention-bias": lambda: hf_model(
        "GPTNeoXConfig", "GPTNeoXForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        use_parallel_residual=False, attention_bias=False, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
    ),
    # more encoder than decoder layers: transformers 5's generate cache breaks with more decoder layers
    "t5-v1.0": lambda: hf_model("T5Config", "T5ForConditionalGeneration", **T5, d_kv=16, num_layers=3, num_decoder_layers=2, feed_forward_proj="relu"),
    "t5-v1.1-untied": lambda: untie(
        hf_model("T5Config", "T5ForConditionalGeneration", **T5, d_kv=8, num_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ),
}


def inputs(hf: torch.nn.Module, *, length: int = 12, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random ``(tokens, src)``: ``src`` is the encoder input of an encoder-decoder, else ``None``."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (batch, length), generator=g)
    src = torch.randint(0, VOCAB, (batch, length + 3), generator=g) if hf.config.is_encoder_decoder else None
    return tokens, src
