"""A small eager mirror of transformers' T5EncoderModel (T5 v1.1): the attribute names, block structure and forward
signature of modeling_t5.py, written from its documented behaviour (../shared/COGVIDEOX.md §2) for the tests."""

import math
from types import SimpleNamespace

import torch
from torch import nn

from mirror_common import PretrainedMixin, attr_config


class T5LayerNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, h):
        variance = h.to(torch.float32).pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            h = h.to(self.weight.dtype)
        return self.weight * h


class NewGELUActivation(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wi_0 = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.wi_1 = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.wo = nn.Linear(c.d_ff, c.d_model, bias=False)
        self.dropout = nn.Dropout(c.dropout_rate)
        self.act = NewGELUActivation()

    def forward(self, h):
        h = self.dropout(self.act(self.wi_0(h)) * self.wi_1(h))
        if h.dtype != self.wo.weight.dtype:
            h = h.to(self.wo.weight.dtype)
        return self.wo(h)


class T5LayerFF(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(c)
        self.layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon)
        self.dropout = nn.Dropout(c.dropout_rate)

    def forward(self, h):
        return h + self.dropout(self.DenseReluDense(self.layer_norm(h)))


class T5Attention(nn.Module):
    def __init__(self, c, has_relative_attention_bias):
        super().__init__()
        self.has_relative_attention_bias = has_relative_attention_bias
        self.relative_attention_num_buckets = c.relative_attention_num_buckets
        self.relative_attention_max_distance = c.relative_attention_max_distance
        self.n_heads = c.num_heads
        self.key_value_proj_dim = c.d_kv
        inner = c.num_heads * c.d_kv
        self.q = nn.Linear(c.d_model, inner, bias=False)
        self.k = nn.Linear(c.d_model, inner, bias=False)
        self.v = nn.Linear(c.d_model, inner, bias=False)
        self.o = nn.Linear(inner, c.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(c.relative_attention_num_buckets, c.num_heads)

    @staticmethod
    def _relative_position_bucket(rel, num_buckets, max_distance):
        num_buckets //= 2
        buckets = (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
        max_exact = num_buckets // 2
        large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                             * (num_buckets - max_exact)).to(torch.long)
        large = torch.min(large, torch.full_like(large, num_buckets - 1))
        return buckets + torch.where(rel < max_exact, rel, large)

    def compute_bias(self, q_len, k_len):
        ctx = torch.arange(q_len, dtype=torch.long)[:, None]
        mem = torch.arange(k_len, dtype=torch.long)[None, :]
        buckets = self._relative_position_bucket(mem - ctx, self.relative_attention_num_buckets,
                                                 self.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute([2, 0, 1]).unsqueeze(0)

    def forward(self, h, mask=None, position_bias=None):
        B, L, _ = h.shape

        def heads(x):
            return x.view(B, -1, self.n_heads, self.key_value_proj_dim).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = torch.matmul(q, k.transpose(3, 2))
        if position_bias is None:
            position_bias = self.compute_bias(L, L)
            if mask is not None:
                position_bias = position_bias + mask
        scores = scores + position_bias
        weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.matmul(weights, v).transpose(1, 2).contiguous().view(B, -1, self.n_heads * self.key_value_proj_dim)
        return self.o(out), position_bias


class T5LayerSelfAttention(nn.Module):
    def __init__(self, c, has_relative_attention_bias):
        super().__init__()
        self.SelfAttention = T5Attention(c, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon)
        self.dropout = nn.Dropout(c.dropout_rate)

    def forward(self, h, mask=None, position_bias=None):
        out, position_bias = self.SelfAttention(self.layer_norm(h), mask, position_bias)
        return h + self.dropout(out), position_bias


class T5Block(nn.Module):
    def __init__(self, c, has_relative_attention_bias):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(c, has_relative_attention_bias), T5LayerFF(c)])

    def forward(self, h, mask=None, position_bias=None):
        h, position_bias = self.layer[0](h, mask, position_bias)
        return self.layer[1](h), position_bias


class T5Stack(nn.Module):
    def __init__(self, c, embed_tokens):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.block = nn.ModuleList([T5Block(c, i == 0) for i in range(c.num_layers)])
        self.final_layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon)
        self.dropout = nn.Dropout(c.dropout_rate)

    def forward(self, input_ids, attention_mask=None):
        h = self.dropout(self.embed_tokens(input_ids))
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=h.dtype)
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        position_bias = None
        for block in self.block:
            h, position_bias = block(h, mask, position_bias)
        return self.dropout(self.final_layer_norm(h))


class T5EncoderModel(PretrainedMixin, nn.Module):
    config_extras = {"model_type": "t5", "architectures": ["T5EncoderModel"]}

    def __init__(self, vocab_size=384, d_model=64, d_kv=16, num_heads=4, d_ff=160, num_layers=2,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                 dropout_rate=0.1, pad_token_id=0, eos_token_id=1, feed_forward_proj="gated-gelu"):
        super().__init__()
        self.config = attr_config(vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, num_heads=num_heads, d_ff=d_ff,
                                  num_layers=num_layers, relative_attention_num_buckets=relative_attention_num_buckets,
                                  relative_attention_max_distance=relative_attention_max_distance,
                                  layer_norm_epsilon=layer_norm_epsilon, dropout_rate=dropout_rate,
                                  pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                  feed_forward_proj=feed_forward_proj)
        self.shared = nn.Embedding(vocab_size, d_model)
        self.encoder = T5Stack(self.config, self.shared)

    def forward(self, input_ids, attention_mask=None, return_dict=True):
        h = self.encoder(input_ids, attention_mask)
        return SimpleNamespace(last_hidden_state=h) if return_dict else (h,)
