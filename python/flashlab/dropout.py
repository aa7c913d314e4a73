"""Attention dropout's keep mask on numpy, the one every flashlab variant applies (core/dropout.hpp, through the C
ABI's flashlab_dropout_mask), so tests and users can reproduce what a launch dropped.

As FlashAttention-2, dropout acts on the normalized probabilities after the softmax: O = (Z o P / (1 - p)) V, with the
LSE from the undropped P, and the backward under the same Z. Z is a pure function of (p, seed, offset, batch entry b,
query head h, query row i, key j), with i and j counted from the start of their sequence; (b, h) takes the Philox
subsequence offset + b H + h, so a fresh mask for the next call needs the offset advanced by at least B H.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from . import _abi


def _one(dropout_p: float, dropout_seed: int, dropout_offset: int, b: int, h: int, heads: int, nq: int,
         nk: int) -> np.ndarray:
    ext = _abi.make_ext(dropout_p, dropout_seed, dropout_offset)  # checks seed and offset
    keep = np.empty((nq, nk), dtype=np.uint8)
    _abi.check(_abi.library().flashlab_dropout_mask(ext.dropout_p, ext.dropout_seed, ext.dropout_offset, b, h, heads,
                                                    nq, nk, keep.ctypes.data))
    return keep.view(bool)


def dropout_mask(dropout_p: float, dropout_seed: int, dropout_offset: int, *, heads: int,
                 batch: Optional[int] = None, seqlen_q: Optional[int] = None, seqlen_k: Optional[int] = None,
                 seqlens_q: Optional[Sequence[int]] = None,
                 seqlens_k: Optional[Sequence[int]] = None) -> Union[np.ndarray, List[np.ndarray]]:
    """The keep mask (True: kept) of dropout with probability dropout_p under (dropout_seed, dropout_offset).

    Dense (batch, seqlen_q, seqlen_k): bool [batch, heads, seqlen_q, seqlen_k]. Varlen (seqlens_q, seqlens_k, the
    per-sequence lengths): a list with one bool [heads, seqlens_q[b], seqlens_k[b]] per sequence. `heads` is the
    number of query heads (GQA: the mask is per query head). dropout_p = 0 keeps every weight; p outside [0, 1)
    raises flashlab.InvalidArgument."""
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
