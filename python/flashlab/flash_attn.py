"""flash_attn 2.x's entry points on flashlab's variants: flash_attn_func and flash_attn_varlen_func on torch tensors.

The same arguments, layouts and meanings as flash-attn 2.x (q [B, N_q, H, d], k and v [B, N_k, H_kv, d]; varlen
q [total_q, H, d] with cu_seqlens_q [B + 1] int32, ...; causal bottom-right aligned; window_size (left, right) with -1
unbounded; the output [B, N_q, H, d] and, with return_attn_probs, the LSE [B, H, N_q] (varlen [H, total_q]) in
float32), autograd included. `variant` picks the kernel (default flash2; "flash2[deterministic=1]" is what
deterministic=True selects; a CPU variant such as cpu-standard runs CPU tensors). Launches go on the current CUDA
stream; workspace comes from PyTorch's caching allocator on that stream.

Dropout as flash-attn 2.x: it applies when dropout_p > 0 (dropout_p in [0, 1), else ValueError), on the normalized
probabilities, O = (Z o P / (1 - p)) V with the LSE from the undropped P; the backward uses the forward's mask (the
(seed, offset) is kept with the autograd node). The mask is flashlab.dropout_mask(dropout_p, seed, offset, ...).
Where (seed, offset) come from, unless the caller gives dropout_seed (and dropout_offset, default 0), a flashlab
extension:
  - CUDA tensors: torch's default CUDA generator of q's device, as flash-attn's philox_cuda_state: seed =
    generator.initial_seed(), offset = generator.get_offset(), then the generator's offset advances by B H rounded up
    to a multiple of 4 (PyTorch keeps Philox offsets multiples of 4). Each (b, h) takes subsequence offset + b H + h,
    so consecutive calls get fresh masks, and torch.manual_seed(s) / torch.cuda.manual_seed(s) (offset 0) repeat them.
  - CPU tensors: torch's default CPU generator (a Mersenne twister, no offset): seed = one draw of
    torch.randint(0, 2**63 - 1, (), generator=torch.default_generator), offset = 0; the draw advances the generator.
With return_attn_probs and dropout_p > 0 the third value is flash-attn's S_dmask, a debugging aid: [B, H, N_q, N_k]
(varlen: [B, H, max_seqlen_q, max_seqlen_k], zero past each sequence; flash-attn pads to multiples of 128, flashlab
does not), in q's dtype, holding P = exp(scale S - LSE) where a weight is kept and -P where it is dropped, 0 where
the causal or window mask removes it. Without dropout the third value is None, as flash-attn's.

Other arrays: q, k, v (and cu_seqlens) may be any array with __dlpack__ (CuPy, JAX, numpy, ...); they are taken
through torch.from_dlpack without a copy and the results are torch tensors (autograd needs torch tensors).

Options flashlab does not have raise a ValueError naming the option: softcap, alibi_slopes, block_table.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import numpy as np

from . import _abi
from .dropout import _one as dropout_mask_block


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError("flashlab.flash_attn_func needs PyTorch (pip install torch)") from e
    return torch


def _dtype_code(torch, dtype) -> int:
    codes = {torch.float16: _abi.FP16, torch.bfloat16: _abi.BF16, torch.float32: _abi.FP32, torch.float64: _abi.FP64}
    if dtype not in codes:
        raise ValueError(f"flashlab: dtype {dtype} is not supported (float16, bfloat16; float32, float64 on the CPU "
                         "variants)")
    return codes[dtype]


def _refuse_options(dropout_p: float, softcap: float, alibi_slopes, block_table=None) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flashlab: dropout_p = {dropout_p} must be in [0, 1) (the probability of dropping a weight)")
    if softcap != 0.0:
        raise ValueError(f"flashlab: softcap = {softcap} is not supported (flashlab's kernels have no logit softcap)")
    if alibi_slopes is not None:
        raise ValueError("flashlab: alibi_slopes is not supported (flashlab's kernels have no ALiBi bias)")
    if block_table is not None:
        raise ValueError("flashlab: block_table (paged KV cache) is not supported")


def _strides(t) -> _abi.Strides:
    """Strides in elements of a [B, N, H, d] tensor, or of a varlen [total, H, d] one (batch stride 0)."""
    s = t.stride()
    if s[-1] != 1:
        raise ValueError(f"flashlab: the last dimension must be contiguous (strides {tuple(s)})")
    return _abi.Strides(*s[:3]) if t.dim() == 4 else _abi.Strides(0, s[0], s[1])


class _Workspace:
    """flashlab_workspace over PyTorch's caching allocator on `stream` (CUDA tensors); none for CPU tensors."""

    def __init__(self, torch, device, stream):
        self.struct = None
        if device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()

        def allocate(nbytes, _user):
            try:
                return torch.cuda.caching_allocator_alloc(int(nbytes), index, stream)
            except RuntimeError:  # out of memory: the library reports it
                return None

        def release(pointer, _user):
            torch.cuda.caching_allocator_delete(pointer)

        allocate_t = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        release_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
        self._callbacks = (allocate_t(allocate), release_t(release))  # kept alive for the call
        self.struct = _abi.Workspace(ctypes.cast(self._callbacks[0], ctypes.c_void_p),
                                     ctypes.cast(self._callbacks[1], ctypes.c_void_p), None)

    def pointer(self):
        return ctypes.addressof(self.struct) if self.struct is not None else None


def _launch(torch, forward: bool, variant: str, problem, ext, dtype: int, tensors, device) -> None:
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    workspace = _Workspace(torch, device, stream.cuda_stream if stream is not None else None)
    lib = _abi.library()
    call = lib.flashlab_forward_ext if forward else lib.flashlab_backward_ext
    _abi.check(call(variant.encode(), ctypes.byref(problem), ctypes.byref(ext), dtype, ctypes.byref(tensors),
                    stream.cuda_stream if stream is not None else None, workspace.pointer()))


def dropout_offset_increment(batch: int, heads: int) -> int:
    """How far one call with dropout advances the CUDA generator's offset: B H rounded up to a multiple of 4."""
    return (batch * heads + 3) // 4 * 4


def _dropout_seed_offset(torch, device, batch: int, heads: int, seed: Optional[int], offset: Optional[int]):
    """(seed, offset) of a call with dropout: the caller's, else drawn from torch's default generator of the device
    (the module's docstring says how, and how the generator advances)."""
    if seed is not None:
        return int(seed), int(offset or 0)
    if offset is not None:
        raise ValueError("flashlab: dropout_offset without dropout_seed (give both, or neither to use torch's "
                         "generator)")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        generator = torch.cuda.default_generators[index]
        seed, offset = generator.initial_seed(), generator.get_offset()
        generator.set_offset(offset + dropout_offset_increment(batch, heads))
        return int(seed), int(offset)
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=torch.default_generator)), 0


def _pointer(t) -> Optional[int]:
    return t.data_ptr() if t is not None else None


class _Call:
    """One attention problem on torch tensors: what the forward and the backward share."""

    def __init__(self, torch, q, k, v, softmax_scale, causal, window_size, variant, cu_seqlens_q=None,
                 cu_seqlens_k=None, dropout_p=0.0, dropout_seed=None, dropout_offset=None):
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"flashlab: {name} must be a torch.Tensor, not {type(t).__name__}")
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(f"flashlab: q, k, v must share a dtype (got {q.dtype}, {k.dtype}, {v.dtype})")
        if not (q.device == k.device == v.device):
            raise ValueError(f"flashlab: q, k, v must be on one device (got {q.device}, {k.device}, {v.device})")
        self.device = q.device
        self.dtype = _dtype_code(torch, q.dtype)
        self.variant = variant
        seqlens_q = seqlens_k = None
        self.cu = (None, None)
        if cu_seqlens_q is not None:
            cq = cu_seqlens_q.to(torch.int32).contiguous()
            ck = cu_seqlens_k.to(torch.int32).contiguous()
            host_q, host_k = cq.cpu().numpy().astype(np.int64), ck.cpu().numpy().astype(np.int64)
            seqlens_q, seqlens_k = np.diff(host_q), np.diff(host_k)
            self.cu = (cq.to(self.device), ck.to(self.device))
        if len(window_size) != 2:
            raise ValueError(f"flashlab: window_size must be (left, right), got {window_size}")
        self.problem, self._keep = _abi.make_problem(q, k, v, causal, tuple(window_size), softmax_scale, seqlens_q,
                                                     seqlens_k)
        self.varlen = seqlens_q is not None
        self.causal, self.window = bool(causal), tuple(int(w) for w in window_size)
        self.scale = float(softmax_scale) if softmax_scale is not None else 1.0 / float(q.shape[-1]) ** 0.5
        self.dropout = (float(dropout_p), 0, 0)
        if dropout_p > 0:  # as flash-attn: no mask, and no draw from the generator, at p = 0
            seed, offset = _dropout_seed_offset(torch, self.device, self.problem.batch, self.problem.heads,
                                                dropout_seed, dropout_offset)
            self.dropout = (float(dropout_p), seed, offset)
        self.ext = _abi.make_ext(*self.dropout)

    def tensors(self, q, k, v, o, lse, d_out=None, dq=None, dk=None, dv=None) -> _abi.Tensors:
        t = _abi.Tensors(q=_pointer(q), k=_pointer(k), v=_pointer(v), o=_pointer(o), lse=_pointer(lse),
                         d_out=_pointer(d_out), dq=_pointer(dq), dk=_pointer(dk), dv=_pointer(dv),
                         cu_seqlens_q=_pointer(self.cu[0]), cu_seqlens_k=_pointer(self.cu[1]))
        for name, x in (("q", q), ("k", k), ("v", v), ("o", o), ("d_out", d_out), ("dq", dq), ("dk", dk), ("dv", dv)):
            if x is not None:
                setattr(t, name + "_strides", _strides(x))
        return t

    def lse_shape(self, q):
        return (q.shape[1], q.shape[0]) if self.varlen else (q.shape[0], q.shape[2], q.shape[1])

    def sequences(self, q, k, lse):
        """(q [n_q, H, d], k [n_k, H_kv, d], lse [H, n_q]) of each batch entry."""
        if not self.varlen:
            return [(q[b], k[b], lse[b]) for b in range(q.shape[0])]
        out, a, c = [], 0, 0
        for nq, nk in zip(self._keep[0].tolist(), self._keep[1].tolist()):
            out.append((q[a:a + nq], k[c:c + nk], lse[:, a:a + nq]))
            a, c = a + nq, c + nk
        return out

    def attn_probs(self, torch, q, k, lse):
        """flash-attn's S_dmask (the module's docstring): P where kept, -P where dropped, 0 where masked."""
        seqs = self.sequences(q.detach(), k.detach(), lse)
        heads = q.shape[-2]
        longest_q = max((s[0].shape[0] for s in seqs), default=0)
        longest_k = max((s[1].shape[0] for s in seqs), default=0)
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = torch.zeros(len(seqs), heads, longest_q, longest_k, dtype=q.dtype, device=q.device)
        p_drop, seed, offset = self.dropout
        for b, (qs, ks, ls) in enumerate(seqs):
            nq, nk = qs.shape[0], ks.shape[0]
            if nq == 0 or nk == 0:
                continue
            kh = ks.to(work).repeat_interleave(heads // ks.shape[1], dim=1)
            s = self.scale * torch.einsum("ihd,jhd->hij", qs.to(work), kh)
            i = torch.arange(nq, device=q.device)[:, None] + nk - nq
            j = torch.arange(nk, device=q.device)[None, :]
            left, right = self.window
            if self.causal:
                right = 0 if right < 0 else min(right, 0)
            allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
            if left >= 0:
                allowed &= j >= i - left
            if right >= 0:
                allowed &= j <= i + right
            p = torch.exp(s - ls.to(work)[:, :, None])
            keep = np.stack([dropout_mask_block(p_drop, seed, offset, b, h, heads, nq, nk) for h in range(heads)])
            keep = torch.from_numpy(keep).to(q.device)
            zero = torch.zeros((), dtype=work, device=q.device)
            out[b, :, :nq, :nk] = torch.where(allowed, torch.where(keep, p, -p), zero).to(q.dtype)
        return out


def _function(torch):
    class FlashAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, call):
            o = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
            lse = torch.empty(call.lse_shape(q), dtype=torch.float32, device=q.device)
            _launch(torch, True, call.variant, call.problem, call.ext, call.dtype, call.tensors(q, k, v, o, lse),
                    call.device)
            ctx.call = call
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.mark_non_differentiable(lse)
            return o, lse

        @staticmethod
        def backward(ctx, d_out, _d_lse):
            q, k, v, o, lse = ctx.saved_tensors
            call = ctx.call
            d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            _launch(torch, False, call.variant, call.problem, call.ext, call.dtype,  # the forward's dropout mask
                    call.tensors(q, k, v, o, lse, d_out, dq, dk, dv), call.device)
            return dq, dk, dv, None

    return FlashAttention


def _variant(variant: str, deterministic: bool) -> str:
    if not deterministic:
        return variant
    if "[" in variant:
        return variant[:-1] + ",deterministic=1]"
    return variant + "[deterministic=1]"


def _run(torch, q, k, v, call, return_attn_probs):
    o, lse = _function(torch).apply(q, k, v, call)
    if not return_attn_probs:
        return o
    return o, lse, call.attn_probs(torch, q, k, lse) if call.dropout[0] > 0 else None


def _from_dlpack(torch, **arrays):
    """Each array as a torch tensor: torch tensors as they are, any other array with __dlpack__ (CuPy, JAX, numpy,
    ...) through torch.from_dlpack, sharing its memory; None stays None. Else TypeError naming the argument."""
    out = []
    for name, x in arrays.items():
        if x is None or isinstance(x, torch.Tensor):
            out.append(x)
        elif hasattr(x, "__dlpack__"):
            try:
                out.append(torch.from_dlpack(x))
            except (RuntimeError, TypeError, BufferError) as e:
                raise TypeError(f"flashlab: {name} ({type(x).__name__}) could not be taken through DLPack: {e}") from e
        else:
            raise TypeError(f"flashlab: {name} must be a torch.Tensor or an array with __dlpack__, not "
                            f"{type(x).__name__}")
    return out


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0, alibi_slopes=None,
                    deterministic: bool = False, return_attn_probs: bool = False, variant: str = "flash2",
                    dropout_seed: Optional[int] = None, dropout_offset: Optional[int] = None):
    """flash_attn.flash_attn_func on flashlab's `variant`: q [B, N_q, H, d], k, v [B, N_k, H_kv, d] -> [B, N_q, H, d].
    dropout_seed / dropout_offset (flashlab's): the dropout mask's key, else drawn from torch's generator."""
    torch = _torch()
    _refuse_options(dropout_p, softcap, alibi_slopes)
    q, k, v = _from_dlpack(torch, q=q, k=k, v=v)
    call = _Call(torch, q, k, v, softmax_scale, causal, window_size, _variant(variant, deterministic),
                 dropout_p=dropout_p, dropout_seed=dropout_seed, dropout_offset=dropout_offset)
    return _run(torch, q, k, v, call, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                           dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
                           window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0, alibi_slopes=None,
                           deterministic: bool = False, return_attn_probs: bool = False, block_table=None,
                           variant: str = "flash2", dropout_seed: Optional[int] = None,
                           dropout_offset: Optional[int] = None):
    """flash_attn.flash_attn_varlen_func on flashlab's `variant`: q [total_q, H, d], k, v [total_k, H_kv, d] with
    cu_seqlens_q / cu_seqlens_k [B + 1] (int32) -> [total_q, H, d]. The lengths are read on the host (one copy of
    cu_seqlens per call); max_seqlen_q / max_seqlen_k are checked against them. Dropout as flash_attn_func's."""
    torch = _torch()
    _refuse_options(dropout_p, softcap, alibi_slopes, block_table)
    q, k, v, cu_seqlens_q, cu_seqlens_k = _from_dlpack(torch, q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q,
                                                       cu_seqlens_k=cu_seqlens_k)
    call = _Call(torch, q, k, v, softmax_scale, causal, window_size, _variant(variant, deterministic), cu_seqlens_q,
                 cu_seqlens_k, dropout_p=dropout_p, dropout_seed=dropout_seed, dropout_offset=dropout_offset)
    longest_q = int(call._keep[0].max()) if call._keep[0].size else 0
    longest_k = int(call._keep[1].max()) if call._keep[1].size else 0
    if max_seqlen_q < longest_q or max_seqlen_k < longest_k:
        raise ValueError(f"flashlab: max_seqlen_q = {max_seqlen_q}, max_seqlen_k = {max_seqlen_k} are below the "
                         f"longest sequences of cu_seqlens ({longest_q}, {longest_k})")
    return _run(torch, q, k, v, call, return_attn_probs)
