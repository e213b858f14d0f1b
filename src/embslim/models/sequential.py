"""Sequential recommenders over a user's item history: SASRec and HSTU.

Both read the item field only (no user table): the input is a user's last `maxlen` items,
left-padded with -1 so the latest item is always in the last position, and the output at each
position is a vector whose inner product with an item's embedding scores that item as the next
one. The output layer is the item table itself (`field_table`), so scoring every item is one
matrix product, whatever embedding method serves the table. The transformer works at the item
field's width, so mixed-width methods work unchanged. Training and ranking are the "sequence"
objective's (train/objective_sequence.py).

Where the data has timestamps the objective also passes `times`: each position's item time and
its query time (the time of the item it predicts; the final position of a ranking query, whose
next item is unknown, its own time, as in the HSTU reference). HSTU turns their differences into
a learned bias; SASRec has no use for them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from embslim.data.fields import FieldSpec
from embslim.embeddings.base import FeatureEmbedding
from embslim.errors import ConfigError
from embslim.models.base import ModelOptions, Recommender
from embslim.models.registry import register_model

Times = tuple[torch.Tensor, torch.Tensor]  # [B, L] item times and [B, L] query times of the positions
TIME_BUCKETS = 128  # HSTU's time bias: buckets of log |query time - item time| (seconds), the reference's count
TIME_BUCKET_WIDTH = 0.301  # ... each this wide in natural log, as in the reference


class SequenceModel(Recommender):
    """Item embeddings scaled by sqrt(d) plus learned positions, a stack of causal blocks, a final LayerNorm."""

    objective = "sequence"

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions) -> None:
        super().__init__(embedding)
        if len(embedding.dims) != 1 or embedding.dims[0] < 1:
            raise ConfigError(f"{type(self).__name__} needs one item field of width >= 1, got widths {embedding.dims}")
        if options.maxlen < 1 or options.blocks < 1:
            raise ConfigError(f"maxlen and blocks must be >= 1, got {options.maxlen} and {options.blocks}")
        self.width = embedding.dims[0]
        self.maxlen = options.maxlen
        self.heads = options.heads if self.width % options.heads == 0 else 1  # a width the heads do not divide gets one head
        self.positions = nn.Embedding(options.maxlen, self.width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.input_dropout = nn.Dropout(options.dropout)
        self.final_norm = nn.LayerNorm(self.width)

    @staticmethod
    def select_fields(fields: list[FieldSpec], user_field: str | None, item_field: str | None) -> list[str]:
        if item_field is None:
            raise ConfigError("sequence models need a top-k dataset with an item field")
        return [item_field]

    def blocks_forward(self, x: torch.Tensor, valid: torch.Tensor, times: Times | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, items: torch.Tensor, times: Times | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[B, L] item ids (-1 = padding, L <= maxlen) -> hidden states [B, L, d] and the item vectors read.

        Position t sees items 0..t only, so its state predicts item t + 1.
        """
        if items.shape[1] > self.maxlen:
            raise ConfigError(f"sequence of length {items.shape[1]} is longer than maxlen {self.maxlen}")
        valid = items >= 0
        vectors = self.embedding.lookup_sequence(0, items)
        pos = self.positions.weight[self.maxlen - items.shape[1]:]
        x = self.input_dropout(vectors * math.sqrt(self.width) + pos) * valid.unsqueeze(-1)
        return self.final_norm(self.blocks_forward(x, valid, times)), [vectors[valid]]

    def encode_last(self, items: torch.Tensor, times: Times | None = None) -> torch.Tensor:
        """[B, L] left-padded histories -> [B, d] the state at the last position, the query that scores the next item.

        Rows are encoded in groups of similar length, each group reading only as many columns as its longest
        history: padding changes no real position's state, and most histories are far shorter than maxlen
        (Video Games: mean 5.9 of 50), so this does a fraction of the work of encoding every column.
        """
        if len(items) == 0:
            return self.encode(items, times)[0][:, -1]
        lengths = (items >= 0).sum(dim=1)
        width_class = torch.ceil(torch.log2(lengths.clamp(min=1).float())).long()
        groups, states = [], []
        for c in torch.unique(width_class).tolist():
            rows = torch.nonzero(width_class == c).squeeze(1)
            width = max(1, int(lengths[rows].max()))
            groups.append(rows)
            cut = lambda t: t[rows, items.shape[1] - width:]  # noqa: E731
            states.append(self.encode(cut(items), None if times is None else (cut(times[0]), cut(times[1])))[0][:, -1])
        out = states[0].new_empty((len(items), states[0].shape[1]))
        out[torch.cat(groups)] = torch.cat(states)
        return out

    def item_vectors(self) -> torch.Tensor:
        """[n_items, d] the output layer: the item table as the embedding method serves it."""
        return self.embedding.field_table(0)

    @staticmethod
    def causal_mask(valid: torch.Tensor) -> torch.Tensor:
        """[B, 1, L, L] True where query t may attend key s: s <= t, s not padding (a position always sees itself)."""
        length = valid.shape[1]
        lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=valid.device))
        eye = torch.eye(length, dtype=torch.bool, device=valid.device)
        return ((lower & valid.unsqueeze(1)) | eye).unsqueeze(1)


class SASRecBlock(nn.Module):
    """Pre-LN transformer block: causal multi-head self-attention and a two-layer point-wise feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attn_norm, self.ffn_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(attn.transpose(1, 2).reshape(b, length, d)), self.dropout, self.training)
        x = x + self.ffn(self.ffn_norm(x))
        return x * valid.unsqueeze(-1)


@register_model("sasrec", tasks=("topk",))
class SASRec(SequenceModel):
    """SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the last `maxlen` items,
    pre-LN blocks as in pmixer/SASRec.pytorch, item embeddings shared with the output layer."""

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, **_: object) -> None:
        super().__init__(embedding, options)
        self.blocks = nn.ModuleList(SASRecBlock(self.width, self.heads, options.dropout) for _ in range(options.blocks))

    def blocks_forward(self, x: torch.Tensor, valid: torch.Tensor, times: Times | None = None) -> torch.Tensor:
        mask = self.causal_mask(valid)
        for block in self.blocks:
            x = block(x, mask, valid)
        return x


def time_buckets(times: Times) -> torch.Tensor:
    """[B, L, L] bucket of log |query time of t - time of s| for each (query t, key s) pair, shared by every layer."""
    item_times, query_times = times
    gap = (query_times.unsqueeze(2) - item_times.unsqueeze(1)).abs().clamp(min=1).float()
    return (torch.log(gap) / TIME_BUCKET_WIDTH).long().clamp(0, TIME_BUCKETS)


class HSTULayer(nn.Module):
    """One HSTU layer (Zhai et al., ICML 2024): U, V, Q, K = SiLU(W LN(x)); A = SiLU(QK^T + rab) / maxlen, causal,
    no softmax; out = x + W_o dropout(LN(A V) * U). `rab` is a learned bias per relative position plus, given
    times, one per bucket of log |query time - item time| (the paper's relative attention bias). The divisor is
    the model's maxlen, a constant (the reference divides by the padded length of its inputs, always maxlen), so a
    history's states do not depend on how much padding its batch carries."""

    def __init__(self, width: int, heads: int, maxlen: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout, self.maxlen = heads, dropout, maxlen
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.uvqk = nn.Linear(width, 4 * width, bias=False)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        self.attn_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.out.weight)
        self.relative = nn.Parameter(torch.randn(2 * maxlen - 1) * 0.02)  # index (t - s) + maxlen - 1
        self.time_bias = nn.Parameter(torch.zeros(TIME_BUCKETS + 1))  # used only with timestamps; zeros draw nothing from the seed's stream

    def position_bias(self, length: int) -> torch.Tensor:
        """[L, L] learned bias of each (query t, key s) pair by their offset t - s."""
        t = torch.arange(length, device=self.relative.device)
        return self.relative[(t.unsqueeze(1) - t.unsqueeze(0)) + self.maxlen - 1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_buckets: torch.Tensor | None = None) -> torch.Tensor:
        b, length, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm(x))).chunk(4, dim=-1)
        heads = lambda t: t.view(b, length, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        scores = heads(q) @ heads(k).transpose(-1, -2) + self.position_bias(length)
        if time_buckets is not None:
            scores = scores + self.time_bias[time_buckets].unsqueeze(1)
        weights = F.silu(scores) / self.maxlen * mask
        attn = (weights @ heads(v)).transpose(1, 2).reshape(b, length, d)
        return x + self.out(F.dropout(self.attn_norm(attn) * u, self.dropout, self.training))


@register_model("hstu", tasks=("topk",))
class HSTU(SequenceModel):
    """HSTU (Zhai et al., ICML 2024, "Actions Speak Louder than Words") over the last `maxlen` items.

    Relative position bias, and the time bias where the data has timestamps (MovieLens; the
    SASRec-format files have none).
    """

    def __init__(self, embedding: FeatureEmbedding, options: ModelOptions, **_: object) -> None:
        super().__init__(embedding, options)
        self.blocks = nn.ModuleList(HSTULayer(self.width, self.heads, options.maxlen, options.dropout) for _ in range(options.blocks))

    def blocks_forward(self, x: torch.Tensor, valid: torch.Tensor, times: Times | None = None) -> torch.Tensor:
        mask = self.causal_mask(valid).to(x.dtype)
        buckets = None if times is None else time_buckets(times)
        for block in self.blocks:
            x = block(x, mask, buckets) * valid.unsqueeze(-1)
        return x
