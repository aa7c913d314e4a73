"""flashlab's input generator in numpy, bit for bit: the Q, K, V and dO a flashlab row's kernels see.

A port of core/include/flashlab/core/generator.hpp (`input_value`: Philox4x32-10 draws, Box-Muller with the
deterministic log / sqrt / sincos of detmath.hpp, the eight distributions) and of dtype.hpp's `round_to`, so that a
peer (torch_sdpa.py) runs on the inputs of the flashlab row it stands beside and its error columns compare row by row.

Why numpy reproduces the C++ bits: detmath uses only IEEE-754 basic operations (+ - * / sqrt, rint) in round to
nearest, with no fused multiply-add (host code is built with -ffp-contract=off, the device uses the _rn
intrinsics). A numpy float64 ufunc performs each such operation correctly rounded and separately, so the port matches
as long as it keeps every operation, its order and its constants; each function below names the C++ it follows.
`round_to` works on the float64 bit patterns (uint64) as dtype.hpp does: a direct round to nearest even from double,
subnormals included (going through float32 first would round twice for bf16).

What is numbered how (core/src/generator.cpp `fill`, harness/src/cpu_backend.cpp and gpu_backend.cpp `prepare`):
element i of a tensor is its row-major linear index in the contiguous BSHD tensor [B, N, H, d] (K and V with H_kv
heads, dO shaped like O: [B, N_q, H, d_v]); the structured distributions decode it with heads = shape[2],
dim = shape[3]: channel = i % d, head = (i / d) % H, token = i / (d H) (the packed token b N + n). The stream of a
tensor is its TensorId (q = 1, k = 2, v = 3, d_out = 4); the seed is the run's (results.csv column `seed`).

Covered: dense problems (`inputs`), and varlen batches through their packed layout: a varlen row's tensors are
[1, total_tokens, H, d], which is `inputs(batch=1, seqlen_q=total_q, seqlen_k=total_k, ...)`. Dtypes fp64, fp32,
fp16, bf16 (fp8_e4m3, reserved in flashlab, is not ported). Checked bit for bit against the flashlab binary by
tests/peers/test_flashlab_inputs.py.

    from flashlab_inputs import inputs
    t = inputs(batch=2, heads=8, heads_kv=2, seqlen_q=128, seqlen_k=128, head_dim=64,
               seed=0, distribution="normal", dtype="bf16")   # {"q": float64 [2, 128, 8, 64], "k": ..., ...}
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Declaration order of flashlab::Distribution (generator.hpp kDistributions).
DISTRIBUTIONS = ("normal", "uniform", "outliers", "peaked", "flat", "ramp", "ties", "large_logits")
# flashlab::TensorId: the Philox stream of each input.
TENSOR_IDS = {"q": 1, "k": 2, "v": 3, "d_out": 4}

# FloatFormat of dtype.hpp format_of: (precision, min_normal_exponent, max_finite). fp8_e4m3 is not ported.
FORMATS = {
    "fp32": (24, -126, 3.4028234663852886e38),
    "fp16": (11, -14, 65504.0),
    "bf16": (8, -126, 3.3895313892515355e38),
}
DTYPES = ("fp64",) + tuple(FORMATS)

# Philox4x32-10 (the Random123 constants).
_PHILOX_ROUNDS = 10
_MUL0, _MUL1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_WEYL0, _WEYL1 = 0x9E3779B9, 0xBB67AE85
_WORD = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)

_TWO_POW_53_INV = 1.0 / 9007199254740992.0  # 2^-53

# detmath.hpp
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SQRT_HALF = 0.70710678118654752440
_HALF_PI = 1.57079632679489661923
_LOG_TERMS = 10  # Horner from 1/21 down: k = 9 .. 0
_SINCOS_TERMS = 10  # Horner from n = 10 down to 1

# generator.hpp constants
_OUTLIER_PROBABILITY = 0.001
_OUTLIER_STDDEV = 10.0
_PEAK_NOISE = 0.5
_PEAK_AMPLITUDE = 1.5
_PEAK_CODE_STREAM = 0x636F6465  # "code"
_FLAT_QUERY_SCALE = 1e-3
_RAMP_STEP = 0.5
_RAMP_PERIOD = 8192
_RAMP_QUERY = 1.0
_TIED_KEY = 1.0
_LARGE_LOGIT_SCALE = 32.0

# Elements per work item: small enough that a chunk's temporaries stay in cache; numpy releases the GIL in its
# ufuncs, so the chunks run on all cores.
_CHUNK = 1 << 16


def philox4x32_10(c0, c1, c2, c3, key0, key1):
    """generator.hpp philox4x32_10 on arrays of counter words (uint64 arrays holding 32-bit values). In place on
    copies of the words (1.5x faster than fresh arrays per operation); per round:
    (c0, c1, c2, c3) = (hi(M1 c2) ^ c1 ^ key0, lo(M1 c2), hi(M0 c0) ^ c3 ^ key1, lo(M0 c0))."""
    c0, c1, c2, c3 = (np.array(c, dtype=np.uint64) for c in np.broadcast_arrays(c0, c1, c2, c3))
    p0, p1 = np.empty_like(c0), np.empty_like(c0)
    k0, k1 = key0 & 0xFFFFFFFF, key1 & 0xFFFFFFFF
    for _ in range(_PHILOX_ROUNDS):
        np.multiply(c0, _MUL0, out=p0)
        np.multiply(c2, _MUL1, out=p1)
        np.right_shift(p1, _32, out=c0)
        np.bitwise_xor(c0, c1, out=c0)
        np.bitwise_xor(c0, np.uint64(k0), out=c0)
        np.right_shift(p0, _32, out=c2)
        np.bitwise_xor(c2, c3, out=c2)
        np.bitwise_xor(c2, np.uint64(k1), out=c2)
        np.bitwise_and(p1, _WORD, out=c1)
        np.bitwise_and(p0, _WORD, out=c3)
        k0 = (k0 + _WEYL0) & 0xFFFFFFFF
        k1 = (k1 + _WEYL1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _draw(seed, stream, index, lane):
    """generator.hpp detail::draw: counter (index lo, index hi, stream, lane), key (seed lo, seed hi)."""
    index = np.asarray(index, dtype=np.uint64)
    return philox4x32_10(index & _WORD, index >> _32, np.uint64(stream), np.asarray(lane, dtype=np.uint64),
                         seed & 0xFFFFFFFF, seed >> 32)


def _unit_interval(hi, lo):
    """generator.hpp detail::unit_interval: 53 bits (hi << 21) ^ (lo >> 11), times 2^-53 (both exact)."""
    bits = (hi << np.uint64(21)) ^ (lo >> np.uint64(11))
    return bits.astype(np.float64) * _TWO_POW_53_INV


def det_log(x):
    """detmath::log for positive finite normal x (the generator's u1 in [2^-53, 1])."""
    bits = x.view(np.uint64)
    e = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023 + 1  # exponent_of(x) + 1
    m = np.ldexp(x, -e)  # [0.5, 1): exact, as ldexp_exact
    low = m < _SQRT_HALF
    m = np.where(low, np.ldexp(m, 1), m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m + -1.0) / (m + 1.0)
    z = s * s
    poly = np.full_like(s, 1.0 / 21.0)
    for k in range(_LOG_TERMS - 1, -1, -1):  # in place: poly = poly * z + 1/(2k+1)
        np.multiply(poly, z, out=poly)
        np.add(poly, 1.0 / (2 * k + 1), out=poly)
    log_m = (2.0 * s) * poly
    return e * _LN2_HI + (e * _LN2_LO + log_m)


def det_cos_turns(u):
    """cos(2 pi u) of detmath::sincos_turns, u in [0, 1) (the generator uses only the cosine)."""
    t = 4.0 * u
    k = np.rint(t)  # half to even, as rint_even
    a = (t + -k) * _HALF_PI
    a2 = a * a
    c = np.ones_like(a)
    s = np.ones_like(a)
    step = np.empty_like(a)
    for n in range(_SINCOS_TERMS, 0, -1):  # in place: c = 1 + -(c * (a2 / ((2n-1) 2n))), s likewise
        np.divide(a2, (2.0 * n - 1) * (2.0 * n), out=step)
        np.multiply(c, step, out=c)
        np.negative(c, out=c)
        np.add(1.0, c, out=c)
        np.divide(a2, (2.0 * n) * (2.0 * n + 1), out=step)
        np.multiply(s, step, out=s)
        np.negative(s, out=s)
        np.add(1.0, s, out=s)
    s = s * a
    quadrant = k.astype(np.int64) & 3  # cos of the 4 cases: c, -s, -c, s
    return np.select([quadrant == 0, quadrant == 1, quadrant == 2], [c, -s, -c], s)


def _normal(r):
    """generator.hpp detail::normal_pair(r).cos: Box-Muller on u1 in (0, 1], u2 in [0, 1)."""
    u1 = 1.0 - _unit_interval(r[0], r[1])
    u2 = _unit_interval(r[2], r[3])
    radius = np.sqrt(-2.0 * det_log(u1))
    return radius * det_cos_turns(u2)


def sample(seed, tensor, index, distribution, heads, dim):
    """generator.hpp sample: the unrounded value of linear indices `index` (uint64 array) of TensorId `tensor`,
    the structured distributions decoding index with InputLayout{heads, dim}."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution '{distribution}': expected one of {', '.join(DISTRIBUTIONS)}")
    r0 = _draw(seed, tensor, index, 0)
    if distribution == "uniform":
        return 2.0 * _unit_interval(r0[0], r0[1]) + -1.0
    normal = _normal(r0)
    is_q, is_k = tensor == TENSOR_IDS["q"], tensor == TENSOR_IDS["k"]
    dim_u, heads_u = np.uint64(dim), np.uint64(heads)
    token = index // (dim_u * heads_u)
    channel = index % dim_u
    if distribution == "outliers":
        r1 = _draw(seed, tensor, index, 1)
        hit = _unit_interval(r1[0], r1[1]) < _OUTLIER_PROBABILITY
        out = normal.copy()
        if hit.any():
            r2 = _draw(seed, tensor, index[hit], 2)
            out[hit] = normal[hit] + _OUTLIER_STDDEV * _normal(r2)
        return out
    if distribution == "peaked":
        if not (is_q or is_k):
            return normal
        code_word = _draw(seed, _PEAK_CODE_STREAM, token, channel)[0]
        code = np.where((code_word & np.uint64(1)) != 0, 1.0, -1.0)
        return _PEAK_NOISE * normal + _PEAK_AMPLITUDE * code
    if distribution == "flat":
        return _FLAT_QUERY_SCALE * normal if is_q else normal
    if distribution == "ramp":
        if not (is_q or is_k):
            return normal
        ramp = (np.full_like(normal, _RAMP_QUERY) if is_q
                else _RAMP_STEP * (token % np.uint64(_RAMP_PERIOD)).astype(np.float64))
        return np.where(channel == 0, ramp, normal)
    if distribution == "ties":
        if is_q:
            return np.where(normal < 0, -normal, normal)  # detail::magnitude: keeps -0.0 as -0.0, unlike np.abs
        if is_k:
            return np.where(token % np.uint64(2) == 0, _TIED_KEY, normal)
        return normal
    if distribution == "large_logits":
        return _LARGE_LOGIT_SCALE * normal if is_q or is_k else normal
    return normal  # normal


def round_to(x, dtype):
    """dtype.hpp round_to: x (float64 array) rounded to nearest even in `dtype`, subnormals and overflow included,
    as float64. Works on the bit patterns, as the C++ does."""
    if dtype == "fp64":
        return x
    if dtype not in FORMATS:
        raise ValueError(f"dtype {dtype} is not ported: expected one of {', '.join(DTYPES)}")
    precision, min_normal_exponent, max_finite = FORMATS[dtype]
    bits = x.view(np.uint64)
    # |x| in the format's normal range: round the 52 stored significand bits to precision - 1, ties to even; a carry
    # out of the significand moves into the exponent field (the next power of two). Infinities pass unchanged.
    drop = np.uint64(52 - (precision - 1))
    low = np.uint64((1 << int(drop)) - 1)
    r = ((bits + (low >> np.uint64(1)) + ((bits >> drop) & np.uint64(1))) & ~low).view(np.float64)
    # subnormal in the format (or in double), and +-0: round at the format's smallest spacing (exact scalings and
    # one rint, which keeps the sign of zero)
    biased = (bits >> np.uint64(52)) & np.uint64(0x7FF)
    small = biased < np.uint64(1023 + min_normal_exponent)
    if small.any():
        shift = precision - 1 - min_normal_exponent
        r[small] = np.ldexp(np.rint(np.ldexp(x[small], shift)), -shift)
    over = np.abs(r) > max_finite
    if over.any():
        r[over] = np.copysign(np.inf, r[over])
    nan = np.isnan(x)  # NaN passes unchanged (the bit rounding above could turn a NaN payload into infinity)
    if nan.any():
        r[nan] = x[nan]
    return r


def values(shape, tensor, seed, distribution, dtype):
    """The dtype-rounded values (float64) of TensorId `tensor` filling a contiguous tensor of `shape`: element i
    is input_value(seed, tensor, i, distribution, dtype, layout) with layout {shape[2], shape[3]} for a rank-4
    [.., tokens, heads, dim] shape, {1, shape[-1]} otherwise (generator.cpp fill)."""
    shape = tuple(int(n) for n in shape)
    heads, dim = (shape[2], shape[3]) if len(shape) == 4 else (1, shape[-1])
    if isinstance(tensor, str):
        tensor = TENSOR_IDS[tensor]
    seed = int(seed)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed {seed} is not a 64-bit unsigned integer")
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=np.float64)

    def chunk(start):
        index = np.arange(start, min(count, start + _CHUNK), dtype=np.uint64)
        out[start:start + index.size] = round_to(sample(seed, tensor, index, distribution, heads, dim), dtype)

    starts = range(0, count, _CHUNK)
    if count <= _CHUNK:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(chunk, starts))  # list(): re-raises a worker's exception
    return out.reshape(shape)


def inputs(batch, heads, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v=None, *, seed, distribution, dtype):
    """Q, K, V and dO of a dense flashlab problem, BSHD, float64 holding the dtype-rounded values (exactly the
    values flashlab's kernels see, so a conversion to the dtype is exact): q [B, N_q, H, d], k [B, N_k, H_kv, d],
    v [B, N_k, H_kv, d_v], d_out [B, N_q, H, d_v]. A varlen batch: batch = 1, seqlen_q / seqlen_k = total tokens."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    shapes = {"q": (batch, seqlen_q, heads, head_dim), "k": (batch, seqlen_k, heads_kv, head_dim),
              "v": (batch, seqlen_k, heads_kv, head_dim_v), "d_out": (batch, seqlen_q, heads, head_dim_v)}
    return {name: values(shape, name, seed, distribution, dtype) for name, shape in shapes.items()}
