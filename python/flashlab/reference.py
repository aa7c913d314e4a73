"""flashlab's exact attention on numpy arrays: the fp64 reference (variant cpu-reference in fp64) through the C ABI.

Layouts as flash_attn: dense q [B, N_q, H, d], k [B, N_k, H_kv, d], v [B, N_k, H_kv, d_v]; varlen (seqlens_q and
seqlens_k given, per-sequence lengths) q [total_q, H, d], k and v [total_k, H_kv, d]. Inputs of any real dtype are
converted to float64 (the reference computes on exactly those values). Masks: causal (bottom-right aligned when
N_q != N_k), window (left, right) with -1 unbounded; softmax_scale default 1/sqrt(d). GQA/MQA when H_kv divides H.
LSE is float32 (the library's type for every variant, natural log); the backward recomputes P from it, so gradients
carry float32's relative error (about 1e-7), O and LSE do not.

Dropout (dropout_p > 0, as FlashAttention-2): O = (Z o P / (1 - p)) V with the LSE from the undropped P, Z the keep
mask of (dropout_seed, dropout_offset) that flashlab.dropout_mask gives; the backward takes the forward's seed and
offset and applies the same Z.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Sequence, Tuple

import numpy as np

from . import _abi

VARIANT = b"cpu-reference"


def _lse_shape(q: np.ndarray, varlen: bool):
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def attention(q, k, v, *, causal: bool = False, window: Tuple[int, int] = (-1, -1),
              softmax_scale: Optional[float] = None, seqlens_q: Optional[Sequence[int]] = None,
              seqlens_k: Optional[Sequence[int]] = None, dropout_p: float = 0.0, dropout_seed: int = 0,
              dropout_offset: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(O, LSE): O float64 in q's layout with v's last dimension; LSE float32 [B, H, N_q] (varlen [H, total_q])."""
    q, k, v = (np.ascontiguousarray(a, dtype=np.float64) for a in (q, k, v))
    p, keep = _abi.make_problem(q, k, v, causal, window, softmax_scale, seqlens_q, seqlens_k)
    ext = _abi.make_ext(dropout_p, dropout_seed, dropout_offset)
    o = np.empty(q.shape[:-1] + (v.shape[-1],), dtype=np.float64)
    lse = np.empty(_lse_shape(q, seqlens_q is not None), dtype=np.float32)
    t = _abi.Tensors(q=q.ctypes.data, k=k.ctypes.data, v=v.ctypes.data, o=o.ctypes.data, lse=lse.ctypes.data)
    _abi.check(_abi.library().flashlab_forward_ext(VARIANT, ctypes.byref(p), ctypes.byref(ext), _abi.FP64,
                                                   ctypes.byref(t), None, None))
    del keep
    return o, lse


def attention_backward(q, k, v, o, lse, d_out, *, causal: bool = False, window: Tuple[int, int] = (-1, -1),
                       softmax_scale: Optional[float] = None, seqlens_q: Optional[Sequence[int]] = None,
                       seqlens_k: Optional[Sequence[int]] = None, dropout_p: float = 0.0, dropout_seed: int = 0,
                       dropout_offset: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dQ, dK, dV) from attention()'s O and LSE and the output gradient d_out (O's shape), float64; with dropout,
    the forward's dropout_p, dropout_seed and dropout_offset."""
    q, k, v, o, d_out = (np.ascontiguousarray(a, dtype=np.float64) for a in (q, k, v, o, d_out))
    lse = np.ascontiguousarray(lse, dtype=np.float32)
    p, keep = _abi.make_problem(q, k, v, causal, window, softmax_scale, seqlens_q, seqlens_k)
    ext = _abi.make_ext(dropout_p, dropout_seed, dropout_offset)
    if o.shape != q.shape[:-1] + (v.shape[-1],) or d_out.shape != o.shape:
        raise ValueError(f"o {o.shape} and d_out {d_out.shape} must be {q.shape[:-1] + (v.shape[-1],)}")
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    t = _abi.Tensors(q=q.ctypes.data, k=k.ctypes.data, v=v.ctypes.data, o=o.ctypes.data, lse=lse.ctypes.data,
                     d_out=d_out.ctypes.data, dq=dq.ctypes.data, dk=dk.ctypes.data, dv=dv.ctypes.data)
    _abi.check(_abi.library().flashlab_backward_ext(VARIANT, ctypes.byref(p), ctypes.byref(ext), _abi.FP64,
                                                    ctypes.byref(t), None, None))
    del keep
    return dq, dk, dv
