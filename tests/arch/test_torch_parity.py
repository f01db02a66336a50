"""Parity with an independent implementation: torch.nn.TransformerEncoder and TransformerDecoder."""

from functools import partial

import pytest
import torch
from torch import nn

from zoo.arch import Stack
from zoo.attention import Attention, CrossAttention, Mask
from zoo.ffn import GeLUMLP
from zoo.norm import LayerNorm
from zoo.pos import Positions
from zoo.residual import Depth, PostNorm, PreNorm

DIM, HEADS, FF, LAYERS = 32, 4, 64, 2


def zoo_stack(residual, *, causal, cross):
    return Stack(
        DIM,
        n_layers=LAYERS,
        n_heads=HEADS,
        head_dim=DIM // HEADS,
        max_seq_len=64,
        causal=causal,
        attention=partial(Attention, bias=True),
        cross_attention=partial(CrossAttention, bias=True) if cross else None,
        ffn=partial(GeLUMLP, hidden_dim=FF, bias=True),
        norm=LayerNorm,
        residual=residual,
        pos=Positions,  # the neutral scheme: torch's layers add no positions
        depth=Depth("decoder" if causal else "encoder", LAYERS, LAYERS if cross else 0),
    ).eval()


def copy_attention(ours: Attention, ref: nn.MultiheadAttention) -> None:
    q, k, v = ref.in_proj_weight.chunk(3)
    qb, kb, vb = ref.in_proj_bias.chunk(3)
    for proj, w, b in [(ours.q_proj, q, qb), (ours.k_proj, k, kb), (ours.v_proj, v, vb), (ours.o_proj, ref.out_proj.weight, ref.out_proj.bias)]:
        proj.weight.copy_(w)
        proj.bias.copy_(b)


@torch.no_grad()
def copy_layers(stack: Stack, ref_layers, *, cross: bool) -> None:
    for ours, ref in zip(stack.layers, ref_layers):
        copy_attention(ours.attn, ref.self_attn)
        if cross:
            copy_attention(ours.cross_attn, ref.multihead_attn)
        ours.ffn.up_proj.load_state_dict(ref.linear1.state_dict())
        ours.ffn.down_proj.load_state_dict(ref.linear2.state_dict())
        ref_norms = [ref.norm1, ref.norm2] + ([ref.norm3] if cross else [])
        for norm, ref_norm in zip(ours.norms, ref_norms):
            norm.load_state_dict(ref_norm.state_dict())


def randomise(module: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_equals_torch_transformer_encoder(norm_first):
    layer = nn.TransformerEncoderLayer(DIM, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first)
    ref = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(DIM) if norm_first else None, enable_nested_tensor=False).eval()
    randomise(ref)
    ours = zoo_stack(PreNorm if norm_first else PostNorm, causal=False, cross=False)
    copy_layers(ours, ref.layers, cross=False)
    if norm_first:
        ours.norm.load_state_dict(ref.norm.state_dict())
    x = torch.randn(2, 9, DIM)
    out = ours(x, positions=torch.arange(9)[None], mask=Mask())
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_equals_torch_transformer_decoder(norm_first):
    layer = nn.TransformerDecoderLayer(DIM, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first)
    ref = nn.TransformerDecoder(layer, LAYERS, norm=nn.LayerNorm(DIM) if norm_first else None).eval()
    randomise(ref)
    ours = zoo_stack(PreNorm if norm_first else PostNorm, causal=True, cross=True)
    copy_layers(ours, ref.layers, cross=True)
    if norm_first:
        ours.norm.load_state_dict(ref.norm.state_dict())
    tgt, memory = torch.randn(2, 7, DIM), torch.randn(2, 5, DIM)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    expected = ref(tgt, memory, tgt_mask=causal, tgt_is_causal=True)
    out = ours(tgt, positions=torch.arange(7)[None], mask=Mask(causal=True), memory=memory)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
