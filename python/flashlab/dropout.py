"""Attention dropout's keep mask on numpy, the one every flashlab variant applies (core/dropout.hpp, through the C
ABI's flashlab_dropout_mask), so tests and users can reproduce what a launch dropped.

As FlashAttention-2, dropout acts on the normalized probabilities after the softmax: O = (Z o P / (1 - p)) V, with the
LSE from the undropped P, and the backward under the same Z. Z is a pure function of (p, seed, offset, batch entry b,
query head h, query row i, key j), with i and j counted from the start of their sequence; (b, h) takes the Philox
subsequence offset + b H + h, so a fresh mask for the next call needs the offset advanced by at least B H. A weight is
kept when its 16-bit piece of a Philox4x32-10 draw (eight per draw) is below floor((1 - p) 2^16): the keep probability
resolves to 2^-16, and the kept weights are scaled by 1 / (1 - p).

A key-padded batch (a [B, N] mask of valid tokens, unpad_input's attention_mask) is drawn in the coordinates of its
unpadded varlen form: weight (i, j) of entry b is the varlen mask's (r_i, r_j), r a token's position among the entry's
valid tokens (for right and left padding, i - pad_b and j - pad_b with pad_b the padded tokens before the valid ones).
So a padded batch and the varlen batch unpad_input makes of it drop the same (token, token) pairs; flashlab's
padded runs (the harness's key_padding rows) draw their mask this way.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from . import _abi
from .padding import _is_torch


def _one(dropout_p: float, dropout_seed: int, dropout_offset: int, b: int, h: int, heads: int, nq: int,
         nk: int) -> np.ndarray:
    ext = _abi.make_ext(dropout_p, dropout_seed, dropout_offset)  # checks seed and offset
    keep = np.empty((nq, nk), dtype=np.uint8)
    _abi.check(_abi.library().flashlab_dropout_mask(ext.dropout_p, ext.dropout_seed, ext.dropout_offset, b, h, heads,
                                                    nq, nk, keep.ctypes.data))
    return keep.view(bool)


def dropout_mask(dropout_p: float, dropout_seed: int, dropout_offset: int, *, heads: int,
                 batch: Optional[int] = None, seqlen_q: Optional[int] = None, seqlen_k: Optional[int] = None,
                 seqlens_q: Optional[Sequence[int]] = None, seqlens_k: Optional[Sequence[int]] = None,
                 attention_mask=None) -> Union[np.ndarray, List[np.ndarray]]:
    """The keep mask (True: kept) of dropout with probability dropout_p under (dropout_seed, dropout_offset).

    Dense (batch, seqlen_q, seqlen_k): bool [batch, heads, seqlen_q, seqlen_k]. Varlen (seqlens_q, seqlens_k, the
    per-sequence lengths): a list with one bool [heads, seqlens_q[b], seqlens_k[b]] per sequence. Key-padded
    (attention_mask, the [B, N] mask of valid tokens that unpad_input takes, numpy or torch; self-attention): bool
    [B, heads, N, N], the varlen mask of unpad_input's batch placed at the valid (query, key) pairs (the module's
    docstring), False wherever the query or the key is padding. `heads` is the number of query heads (GQA: the mask
    is per query head). dropout_p = 0 keeps every weight (every valid pair when padded); p outside [0, 1) raises
    flashlab.InvalidArgument."""
    if attention_mask is not None:
        if any(x is not None for x in (batch, seqlen_q, seqlen_k, seqlens_q, seqlens_k)):
            raise ValueError("flashlab: a padded mask gives attention_mask alone (not batch, seqlen_q, seqlen_k, "
                             "seqlens_q, seqlens_k)")
        valid = np.asarray(attention_mask.detach().cpu() if _is_torch(attention_mask) else attention_mask)
        if valid.ndim != 2:
            raise ValueError(f"flashlab: attention_mask must be [B, N] (valid tokens), got shape {valid.shape}")
        valid = valid.astype(bool)
        out = np.zeros((valid.shape[0], heads, valid.shape[1], valid.shape[1]), dtype=bool)
        for b in range(valid.shape[0]):
            tokens = np.flatnonzero(valid[b])  # the entry's valid tokens, in order: unpad_input's packing
            n = len(tokens)
            for h in range(heads):
                out[b, h, tokens[:, None], tokens[None, :]] = _one(dropout_p, dropout_seed, dropout_offset, b, h, heads,
                                                                   n, n)
        return out
    if seqlens_q is not None or seqlens_k is not None:
        if seqlens_q is None or seqlens_k is None or len(seqlens_q) != len(seqlens_k):
            raise ValueError("flashlab: a varlen mask gives seqlens_q and seqlens_k of one length")
        return [np.stack([_one(dropout_p, dropout_seed, dropout_offset, b, h, heads, int(nq), int(nk))
                          for h in range(heads)]).reshape(heads, int(nq), int(nk))
                for b, (nq, nk) in enumerate(zip(seqlens_q, seqlens_k))]
    if batch is None or seqlen_q is None or seqlen_k is None:
        raise ValueError("flashlab: a dense mask gives batch, seqlen_q and seqlen_k")
    out = np.empty((batch, heads, seqlen_q, seqlen_k), dtype=bool)
    for b in range(batch):
        for h in range(heads):
            out[b, h] = _one(dropout_p, dropout_seed, dropout_offset, b, h, heads, seqlen_q, seqlen_k)
    return out
