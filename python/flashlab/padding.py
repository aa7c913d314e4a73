"""Key-padding masks to varlen batches and back, as flash_attn.bert_padding (2.7) does them.

A padded batch holds B sequences of up to N tokens in [B, N, ...] with a [B, N] mask of valid tokens (right padding
in training code, but any pattern works: the valid tokens of each row are taken in order). `unpad_input` packs the
valid tokens into [total, ...] with the cu_seqlens a varlen attention call takes; `pad_input` scatters a [total, ...]
result back into [B, N, ...] with zeros at the padding. Both work on numpy arrays and on torch tensors (then on
their device, differentiable), and return the same kind they are given.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def unpad_input(hidden_states, attention_mask) -> Tuple[Any, Any, Any, int, Any]:
    """The valid tokens of a padded batch, packed.

    hidden_states: [B, N, ...]; attention_mask: [B, N], nonzero (or True) where a token is valid.
    Returns (unpadded [total, ...], indices [total] of the valid tokens in the flattened [B * N] batch (int64),
    cu_seqlens [B + 1] (int32, from 0), max_seqlen (int), seqused [B] (int32, valid tokens per sequence)).
    """
    if tuple(attention_mask.shape) != tuple(hidden_states.shape[:2]):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; hidden_states [B, N, ...] has "
                         f"B, N = {tuple(hidden_states.shape[:2])}")
    if _is_torch(hidden_states):
        import torch
        import torch.nn.functional as F

        mask = attention_mask.to(torch.bool)
        seqused = mask.sum(dim=-1, dtype=torch.int32)
        indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
        cu_seqlens = F.pad(torch.cumsum(seqused, dim=0, dtype=torch.int32), (1, 0))
        max_seqlen = int(seqused.max().item()) if seqused.numel() else 0
        flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
        return flat.index_select(0, indices), indices, cu_seqlens, max_seqlen, seqused
    mask = np.asarray(attention_mask).astype(bool)
    seqused = mask.sum(axis=-1).astype(np.int32)
    indices = np.flatnonzero(mask.reshape(-1)).astype(np.int64)
    cu_seqlens = np.concatenate([[0], np.cumsum(seqused)]).astype(np.int32)
    max_seqlen = int(seqused.max()) if seqused.size else 0
    flat = np.asarray(hidden_states).reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, max_seqlen, seqused


def pad_input(hidden_states, indices, batch: int, seqlen: int):
    """[total, ...] rows back to [batch, seqlen, ...] at `indices` (unpad_input's), zeros elsewhere."""
    if hidden_states.shape[0] != indices.shape[0]:
        raise ValueError(f"hidden_states has {hidden_states.shape[0]} rows and indices {indices.shape[0]}")
    if batch < 0 or seqlen < 0:
        raise ValueError(f"batch = {batch} and seqlen = {seqlen} must be >= 0")
    rest = tuple(hidden_states.shape[1:])
    if _is_torch(hidden_states):
        import torch

        out = torch.zeros((batch * seqlen,) + rest, dtype=hidden_states.dtype, device=hidden_states.device)
        out = out.index_copy(0, indices.to(device=hidden_states.device, dtype=torch.int64), hidden_states)
        return out.reshape((batch, seqlen) + rest)
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() >= batch * seqlen):
        raise ValueError(f"indices must lie in [0, batch * seqlen) = [0, {batch * seqlen})")
    out = np.zeros((batch * seqlen,) + rest, dtype=np.asarray(hidden_states).dtype)
    out[indices] = hidden_states
    return out.reshape((batch, seqlen) + rest)
