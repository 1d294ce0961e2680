"""Text encoders: a recurrent (GRU / LSTM) and a Transformer encoder over token ids.

Both read the text layout of mtlrun.data.base.ModalityInfo: LongTensor [B, L] of token ids, right-padded
with 0, 1 for an unknown token (mtlrun.data.text.Tokenizer writes it). Padding never changes the result:
the same text padded to a different length gives the same vector, and a text that is all padding (an
empty string) gives a finite one. `encode` offers the per-position outputs as tokens, with
`token_mask = ids != 0`, for the attention fusions, and `tokens` gives them alone (tokens, mask): what
the token-level tasks (mtlrun.tasks.Tagging) read (mtlrun.models.heads).

These are plain `Encoder`s, not `StagedEncoder`s: a sequence model has no stack of 4-D feature maps for the
stage-wise architectures (cross-stitch, MTAN, MMoE, PLE) to take apart; use arch=hps or arch=soft with them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mtlrun.errors import UsageError
from mtlrun.checks import check_dropout, check_range
from mtlrun.models.backbone.base import Encoded, Encoder, masked_mean

_KEY = "backbone.text"
_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def check_text_data(vocab_size, max_len) -> None:
    # data-derived (ModalityInfo.args), so the message names the data rather than a backbone option
    for name, value, low in (("vocab_size", vocab_size, 2), ("max_len", max_len, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"the text data gives {name}={value}; a text encoder needs an integer >= {low} "
                             f"(vocab_size counts <pad> and <unk>)")


class TokenSequenceEncoder(Encoder):
    """A text encoder built on its token sequence: the subclass's `tokens(ids)` gives the outputs
    [B, L, token_dim] and the real-token mask; the vector is `self.project` of their pooling (`pool`: the
    masked mean unless the subclass pools otherwise)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode(ids).vector

    def encode(self, ids: torch.Tensor) -> Encoded:
        tokens, mask = self.tokens(ids)
        return Encoded(self.project(self.pool(tokens, mask)), tokens, mask)

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(tokens, mask)


class RNNText(TokenSequenceEncoder):
    """Embedding -> (bi)GRU / LSTM over the packed sequences -> masked mean of the outputs -> Linear + ReLU.

    The sequences are packed, so the recurrence stops at each text's last real token: trailing padding is
    never fed to it (and the backward direction starts from the real end). On CUDA, and where torch.export
    traces the model, the same result comes from `_unpacked_rnn`, which needs no host sync (packing wants the
    lengths on the host). A text's length is the position of its last non-padding id, so a 0 inside a text is
    read as an (all-zero) padding embedding rather than cutting the text short; it is still left out of the
    mean and of `token_mask`.
    """

    def __init__(self, vocab_size: int, max_len: int, cell: str = "gru", embed_dim: int = 64, hidden: int = 128,
                 layers: int = 1, bidirectional: bool = True, dropout: float = 0.0, out_dim: int = 128):
        super().__init__()
        check_text_data(vocab_size, max_len)
        if cell not in _CELLS:
            raise UsageError(f"{_KEY}.cell={cell}: valid cells are {', '.join(_CELLS)}")
        if not isinstance(bidirectional, bool):
            raise UsageError(f"{_KEY}.bidirectional={bidirectional}: must be true or false")
        for option, value in (("embed_dim", embed_dim), ("hidden", hidden), ("layers", layers), ("out_dim", out_dim)):
            check_range(f"{_KEY}.{option}", value, 1)
        dropout = check_dropout(f"{_KEY}.dropout", dropout)
        self.vocab_size, self.max_len, self.cell = vocab_size, max_len, cell
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        # torch applies the RNN's own dropout between layers only (and warns when there is one layer)
        self.rnn = _CELLS[cell](embed_dim, hidden, num_layers=layers, batch_first=True,
                                    bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.token_dim = hidden * (2 if bidirectional else 1)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.token_dim, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs [B, L, token_dim], zero at padding; mask [B, L], True at a real token)."""
        ids = ids.long()
        length = ids.shape[1]
        mask = ids != 0
        positions = torch.arange(1, length + 1, device=ids.device)
        lengths = (mask * positions).amax(1)  # position of the last real token; 0 for all padding
        # pack_padded_sequence rejects length 0: an all-padding row runs one step on the padding embedding,
        # and that step is masked out below, so the row's vector is the projection of zeros (finite)
        # no host sync: each direction over the padded batch, the backward one on reversed texts. Also what
        # torch.export traces (mtlrun export format=pt2 / onnx): packing's host-side lengths are data-dependent sizes
        if ids.is_cuda or _exporting():
            out = _unpacked_rnn(self.rnn, self.embed(ids), lengths)
        else:
            packed = pack_padded_sequence(self.embed(ids), lengths.clamp(min=1).cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        return out * mask.unsqueeze(-1).to(out.dtype), mask


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting and is_exporting())


def _unpacked_rnn(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """What `rnn` gives on the packed `x` [B, L, E] at each text's real positions (its first `lengths` ones),
    without packing, whose lengths must be on the host: each layer and direction is one unidirectional run
    over the padded batch. Forward, the trailing padding comes after every real position and changes none;
    backward, each text is first reversed within its own length (padding stays behind), run forward with
    the reverse weights, and put back. Positions past a text's length hold values to be masked out."""
    steps = torch.arange(x.shape[1], device=x.device)
    last = lengths.unsqueeze(1) - 1
    flip = torch.where(steps < lengths.unsqueeze(1), last - steps, steps)  # an involution: its own inverse

    def reverse(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, flip.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    for layer in range(rnn.num_layers):
        outputs = []
        for suffix in ("", "_reverse")[: 2 if rnn.bidirectional else 1]:
            weights = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                              "bias_hh") if rnn.bias or "weight" in name]
            inputs = reverse(x) if suffix else x
            h0 = inputs.new_zeros(1, inputs.shape[0], rnn.hidden_size)
            if isinstance(rnn, nn.LSTM):
                out = torch._VF.lstm(inputs, (h0, h0), weights, rnn.bias, 1, 0.0, rnn.training, False, True)[0]
            else:
                out = torch._VF.gru(inputs, h0, weights, rnn.bias, 1, 0.0, rnn.training, False, True)[0]
            outputs.append(reverse(out) if suffix else out)
        x = torch.cat(outputs, dim=-1)
        if layer < rnn.num_layers - 1 and rnn.dropout:
            x = nn.functional.dropout(x, rnn.dropout, rnn.training)
    return x


class TransformerText(TokenSequenceEncoder):
    """Token + learned positional embeddings -> pre-LN TransformerEncoder -> masked mean -> Linear + ReLU.

    Padding positions are masked out as attention keys (src_key_padding_mask), so they change nothing at
    the real positions. Pre-LN (norm_first) trains stably without a learning-rate warm-up, which the
    schedulers here do not all offer; a final LayerNorm closes the stack. Inputs may be shorter than
    `max_len` (the size of the positional table), not longer.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, heads: int = 4, layers: int = 2,
                 ff: int = 128, dropout: float = 0.1, out_dim: int = 128):
        super().__init__()
        check_text_data(vocab_size, max_len)
        for option, value in (("dim", dim), ("heads", heads), ("layers", layers), ("ff", ff), ("out_dim", out_dim)):
            check_range(f"{_KEY}.{option}", value, 1)
        if dim % heads:
            raise UsageError(f"{_KEY}.heads={heads}: must divide {_KEY}.dim={dim} (each head gets dim / heads "
                             f"channels); e.g. heads={max(h for h in range(1, heads + 1) if dim % h == 0)}")
        dropout = check_dropout(f"{_KEY}.dropout", dropout)
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True)
        # nested tensors would only speed up inference, and they are not available with norm_first
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, out_dim), nn.ReLU(inplace=True))
        self.token_dim = dim
        self.out_dim = out_dim

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs [B, L, token_dim], zero at padding; mask [B, L], True at a real token)."""
        ids = ids.long()
        length = ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"TransformerText got sequences of length {length}, longer than its positional "
                             f"table (max_len={self.max_len} from the data)")
        mask = ids != 0
        x = self.embed(ids) + self.position.weight[:length]
        # A row that is all padding would attend over no key at all (softmax of -inf only: NaN). Let its
        # first position attend to itself; its outputs are masked out of the tokens and the mean anyway.
        key_padding = ~mask
        key_padding[:, 0] &= mask.any(1)
        h = self.encoder(x, src_key_padding_mask=key_padding)
        return h * mask.unsqueeze(-1).to(h.dtype), mask
