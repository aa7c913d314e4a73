"""ctypes bindings of libflashlab's C ABI (abi/include/flashlab/flashlab.h, version 1, minor 1 or later).

The library is found through the environment variable FLASHLAB_LIBRARY (a path to libflashlab.so), else beside this
module (an installed wheel), else in the repository's build folders (build/cuda/abi, build/cpu/abi), else by the
loader's search path.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional, Tuple

import numpy as np

ABI_VERSION = 1
ABI_MINOR = 1  # dropout: flashlab_problem_ext, the *_ext calls, flashlab_dropout_mask

OK, INVALID, UNSUPPORTED, OUT_OF_MEMORY, CUDA, INTERNAL = range(6)
FP64, FP32, FP16, BF16 = range(4)
FORWARD, BACKWARD = range(2)


class FlashlabError(RuntimeError):
    """A failed call: `status` is the flashlab_status, the message the library's one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InvalidArgument(FlashlabError, ValueError):
    pass


class Unsupported(FlashlabError):
    pass


class Problem(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("heads", ctypes.c_int64), ("heads_kv", ctypes.c_int64),
                ("seqlen_q", ctypes.c_int64), ("seqlen_k", ctypes.c_int64), ("head_dim", ctypes.c_int64),
                ("head_dim_v", ctypes.c_int64), ("causal", ctypes.c_int), ("window_left", ctypes.c_int64),
                ("window_right", ctypes.c_int64), ("softmax_scale", ctypes.c_double),
                ("seqlens_q", ctypes.POINTER(ctypes.c_int64)), ("seqlens_k", ctypes.POINTER(ctypes.c_int64))]


class ProblemExt(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("dropout_p", ctypes.c_double), ("dropout_seed", ctypes.c_uint64),
                ("dropout_offset", ctypes.c_uint64)]


def make_ext(dropout_p: float = 0.0, dropout_seed: int = 0, dropout_offset: int = 0) -> ProblemExt:
    """The flashlab_problem_ext of a call: dropout applies when dropout_p > 0 (the library refuses p outside
    [0, 1)); seed and offset are unsigned 64-bit."""
    for name, x in (("dropout_seed", dropout_seed), ("dropout_offset", dropout_offset)):
        if not 0 <= int(x) < 2 ** 64:
            raise ValueError(f"flashlab: {name} = {x} must be in [0, 2^64)")
    return ProblemExt(ctypes.sizeof(ProblemExt), float(dropout_p), int(dropout_seed), int(dropout_offset))


class Strides(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("token", ctypes.c_int64), ("head", ctypes.c_int64)]


class Tensors(ctypes.Structure):
    _fields_ = [("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("o", ctypes.c_void_p),
                ("lse", ctypes.c_void_p), ("d_out", ctypes.c_void_p), ("dq", ctypes.c_void_p),
                ("dk", ctypes.c_void_p), ("dv", ctypes.c_void_p)] + \
               [(name, Strides) for name in ("q_strides", "k_strides", "v_strides", "o_strides", "d_out_strides",
                                             "dq_strides", "dk_strides", "dv_strides")] + \
               [("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p)]


def _candidates():
    env = os.environ.get("FLASHLAB_LIBRARY")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libflashlab.so.1")  # an installed wheel (pip install .)
    root = os.path.dirname(os.path.dirname(here))
    for preset in ("cuda", "cpu"):
        yield os.path.join(root, "build", preset, "abi", "libflashlab.so")
    yield "libflashlab.so.1"


def make_problem(q, k, v, causal: bool, window: Tuple[int, int], softmax_scale: Optional[float], seqlens_q,
                 seqlens_k):
    """The flashlab_problem of flash_attn-layout q, k, v (numpy arrays or torch tensors: only their shapes are read),
    with the host arrays it points to (keep them alive for the call): (problem, [seqlens_q, seqlens_k] or [])."""
    varlen = seqlens_q is not None or seqlens_k is not None
    want = 3 if varlen else 4
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != want:
            layout = "[total, H, d] (varlen)" if varlen else "[B, N, H, d]"
            raise ValueError(f"{name} has shape {a.shape}: expected {layout}")
    p = Problem()
    keep = []
    if varlen:
        if seqlens_q is None or seqlens_k is None:
            raise ValueError("a varlen problem gives both seqlens_q and seqlens_k")
        sq = np.ascontiguousarray(seqlens_q, dtype=np.int64)
        sk = np.ascontiguousarray(seqlens_k, dtype=np.int64)
        if sq.ndim != 1 or sq.shape != sk.shape:
            raise ValueError(f"seqlens_q {sq.shape} and seqlens_k {sk.shape} must be 1-d and of one length")
        if int(sq.sum()) != q.shape[0] or int(sk.sum()) != k.shape[0]:
            raise ValueError(f"seqlens sum to {int(sq.sum())} queries and {int(sk.sum())} keys; q has {q.shape[0]}, "
                             f"k {k.shape[0]} tokens")
        keep += [sq, sk]
        p.batch = len(sq)
        p.seqlens_q = sq.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        p.seqlens_k = sk.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        p.heads, p.heads_kv = q.shape[1], k.shape[1]
    else:
        p.batch, p.seqlen_q, p.heads = q.shape[0], q.shape[1], q.shape[2]
        p.seqlen_k, p.heads_kv = k.shape[1], k.shape[2]
    p.head_dim, p.head_dim_v = q.shape[-1], v.shape[-1]
    p.causal = 1 if causal else 0
    p.window_left, p.window_right = int(window[0]), int(window[1])
    p.softmax_scale = float(softmax_scale) if softmax_scale is not None else 0.0
    if k.shape != v.shape[:-1] + (k.shape[-1],) or (q.shape[-1] != k.shape[-1]):
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: k and v share tokens and heads, q and k share d")
    return p, keep


class Workspace(ctypes.Structure):
    _fields_ = [("allocate", ctypes.c_void_p), ("release", ctypes.c_void_p), ("user", ctypes.c_void_p)]


_library: Optional[ctypes.CDLL] = None


def library() -> ctypes.CDLL:
    """The loaded libflashlab, its ABI version checked against this module's."""
    global _library
    if _library is not None:
        return _library
    tried = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(path)
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        lib.flashlab_abi_version.restype = ctypes.c_int
        lib.flashlab_last_error.restype = ctypes.c_char_p
        lib.flashlab_variant_count.restype = ctypes.c_int
        lib.flashlab_variant_id.restype = ctypes.c_char_p
        lib.flashlab_variant_id.argtypes = [ctypes.c_int]
        version = lib.flashlab_abi_version()
        if version != ABI_VERSION:
            raise ImportError(f"{path}: libflashlab ABI version {version}, this package speaks {ABI_VERSION}")
        minor = lib.flashlab_abi_minor() if hasattr(lib, "flashlab_abi_minor") else 0
        if minor < ABI_MINOR:
            raise ImportError(f"{path}: libflashlab ABI {version}.{minor}, this package needs {version}.{ABI_MINOR}")
        for name in ("flashlab_forward", "flashlab_backward"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(Problem), ctypes.c_int, ctypes.POINTER(Tensors),
                           ctypes.c_void_p, ctypes.c_void_p]
        for name in ("flashlab_forward_ext", "flashlab_backward_ext"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(Problem), ctypes.POINTER(ProblemExt), ctypes.c_int,
                           ctypes.POINTER(Tensors), ctypes.c_void_p, ctypes.c_void_p]
        lib.flashlab_dropout_mask.restype = ctypes.c_int
        lib.flashlab_dropout_mask.argtypes = [ctypes.c_double, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64,
                                              ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                              ctypes.c_void_p]
        _library = lib
        return lib
    raise ImportError("libflashlab not found (set FLASHLAB_LIBRARY to the built abi/libflashlab.so); tried: "
                      + "; ".join(tried))


def check(status: int) -> None:
    """Raises the exception of a failed call, with the library's message."""
    if status == OK:
        return
    message = library().flashlab_last_error().decode()
    if status == INVALID:
        raise InvalidArgument(status, message)
    if status == UNSUPPORTED:
        raise Unsupported(status, message)
    raise FlashlabError(status, message)


def variants() -> list:
    lib = library()
    return [lib.flashlab_variant_id(i).decode() for i in range(lib.flashlab_variant_count())]
