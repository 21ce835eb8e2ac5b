"""A small GPT-style decoder in plain PyTorch: token + position embeddings, pre-LayerNorm blocks
of causal self-attention and an MLP, and an output head tied to the token embedding.

``forward`` returns the final hidden states, not logits: the loss decides how to turn them into
logits (a matrix product, or a fused linear + cross-entropy that never stores them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (t.view(batch, time, self.heads, dim // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, time, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        # Residual branches add up over the depth; scaling their last layer keeps the residual
        # stream's variance independent of the number of layers at initialisation (GPT-2).
        for block in self.blocks:
            for last in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(last.weight, std=0.02 / math.sqrt(2 * layers))

    @property
    def head_weight(self) -> torch.Tensor:
        """The output projection ``(vocab, dim)``: tied to the token embedding."""
        return self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(batch, time, dim)`` for byte ids ``idx`` ``(batch, time)``."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        return self(idx) @ self.head_weight.t()


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weight decay on matrices (and the tied embedding), none on biases
    and LayerNorm scales, which only shift or scale activations."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def generate(model: TinyGPT, prompt: bytes, n_bytes: int, temperature: float,
             generator: torch.Generator) -> bytes:
    """Sample ``n_bytes`` continuation bytes, one at a time, from the model's softmax."""
    device = model.head_weight.device
    idx = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    for _ in range(n_bytes):
        logits = model.logits(idx[:, -model.context:])[0, -1].float()
        probs = torch.softmax(logits / temperature, dim=-1).cpu()
        nxt = torch.multinomial(probs, 1, generator=generator).to(device)
        idx = torch.cat([idx, nxt[None]], dim=1)
    model.train(was_training)
    return bytes(idx[0, len(prompt):].tolist())
