/* flashlab's C ABI: any registered attention variant (flashlab list: cpu-reference, cpu-standard, standard, flash2, ...)
 * and the fp64 reference, called from any language through raw pointers with strides.
 *
 * Conventions (as flashlab's C++ API, kernels/include/flashlab/kernels/attention.hpp):
 *  - Q, K, V, O, dO, dQ, dK, dV are [B, N, H, d] (varlen: [total_tokens, H, d]) with strides in elements and a
 *    contiguous last dimension; K and V have heads_kv heads. LSE is float32 [B, H, N_q] (varlen [H, total_q]),
 *    contiguous, natural log. Pointers live where the variant runs: host memory for cpu-*, device memory for GPU
 *    variants.
 *  - The fp64 reference is the variant "cpu-reference" with dtype FLASHLAB_FP64.
 *  - A variant name may carry run options: "flash2[deterministic=1]".
 *  - Every call returns FLASHLAB_OK or an error code; flashlab_last_error() then holds one line naming the problem
 *    (per thread). Nothing is thrown across the ABI.
 *
 * Versioning: FLASHLAB_ABI_VERSION changes whenever an existing struct or signature here changes;
 * flashlab_abi_version() returns the library's, which a caller compares with the header's (equal, or refuse).
 * FLASHLAB_ABI_MINOR counts additions that leave every existing struct and signature as it was (new functions, new
 * structs), so a caller built against an older minor stays valid: a caller needing minor m checks
 * flashlab_abi_minor() >= m.
 *  - minor 1: dropout (flashlab_problem_ext and the *_ext calls, flashlab_dropout_mask).
 */
#ifndef FLASHLAB_FLASHLAB_H
#define FLASHLAB_FLASHLAB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLASHLAB_ABI_VERSION 1
#define FLASHLAB_ABI_MINOR 1

#if defined(FLASHLAB_BUILDING_ABI)
#define FLASHLAB_API __attribute__((visibility("default")))
#else
#define FLASHLAB_API
#endif

typedef enum {
  FLASHLAB_OK = 0,
  FLASHLAB_ERROR_INVALID = 1,       /* bad arguments: shapes, null or misaligned pointers, unknown variant or option */
  FLASHLAB_ERROR_UNSUPPORTED = 2,   /* valid, but not supported by this variant, build or device */
  FLASHLAB_ERROR_OUT_OF_MEMORY = 3, /* the workspace allocation failed */
  FLASHLAB_ERROR_CUDA = 4,          /* a CUDA call failed */
  FLASHLAB_ERROR_INTERNAL = 5       /* anything else */
} flashlab_status;

typedef enum { FLASHLAB_FP64 = 0, FLASHLAB_FP32 = 1, FLASHLAB_FP16 = 2, FLASHLAB_BF16 = 3 } flashlab_dtype;

typedef enum { FLASHLAB_FORWARD = 0, FLASHLAB_BACKWARD = 1 } flashlab_pass;

/* The problem. A varlen batch gives seqlens_q and seqlens_k (host arrays of `batch` lengths; then seqlen_q and
 * seqlen_k are ignored), a dense one leaves them NULL. window_left / window_right: -1 unbounded. softmax_scale <= 0:
 * 1/sqrt(head_dim). head_dim_v 0: head_dim. */
typedef struct {
  int64_t batch, heads, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v;
  int causal;
  int64_t window_left, window_right;
  double softmax_scale;
  const int64_t* seqlens_q;
  const int64_t* seqlens_k;
} flashlab_problem;

/* What the problem gained after version 1.0, passed beside flashlab_problem to the *_ext calls (NULL: all
 * defaults). `size` is sizeof(flashlab_problem_ext) as the caller compiled it: later minors append fields, and the
 * library reads the ones past a caller's size as 0, so set size and zero the rest:
 * flashlab_problem_ext e = {.size = sizeof(e)}.
 *
 * Dropout (minor 1), as FlashAttention-2: on the normalized probabilities after the softmax,
 * O = (Z o P / (1 - p)) V, with the LSE from the undropped P, and the backward under the same keep mask Z. It applies
 * only when dropout_p > 0 (in [0, 1); else FLASHLAB_ERROR_INVALID). Z is a pure function of (dropout_seed,
 * dropout_offset, batch entry b, query head h, query row i, key j), with i and j counted from the start of their
 * sequence: flashlab_dropout_mask gives it. Launches with the same seed and offset drop the same weights, so a
 * backward must get the forward's; a caller wanting a fresh mask on the next launch advances dropout_offset by
 * batch * heads (each (b, h) takes subsequence offset + b heads + h of the Philox counter). */
typedef struct {
  size_t size;
  double dropout_p;
  uint64_t dropout_seed;
  uint64_t dropout_offset;
} flashlab_problem_ext;

/* Strides in elements of a [B, N, H, d] tensor; all 0: contiguous. */
typedef struct {
  int64_t batch, token, head;
} flashlab_strides;

/* The tensors. Forward reads q, k, v and writes o, lse; backward reads q, k, v, o, lse, d_out and writes dq, dk, dv.
 * cu_seqlens_q / cu_seqlens_k (int32, batch + 1 offsets, where the variant runs) are needed by GPU variants for a
 * varlen problem; CPU variants build them from the problem when they are NULL. */
typedef struct {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
  const void* d_out;
  void* dq;
  void* dk;
  void* dv;
  flashlab_strides q_strides, k_strides, v_strides, o_strides, d_out_strides, dq_strides, dk_strides, dv_strides;
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
} flashlab_tensors;

/* Workspace from the caller: allocate returns memory where the variant runs (NULL on failure), aligned to 256 bytes
 * for GPU variants; release frees it and must respect the stream's order (cudaFreeAsync, a caching pool). Both NULL:
 * plain host memory (CPU variants only). */
typedef struct {
  void* (*allocate)(size_t bytes, void* user);
  void (*release)(void* pointer, void* user);
  void* user;
} flashlab_workspace;

FLASHLAB_API int flashlab_abi_version(void);
FLASHLAB_API int flashlab_abi_minor(void);
/* The message of the calling thread's last failed call ("" when none). Valid until its next call. */
FLASHLAB_API const char* flashlab_last_error(void);

/* The variants of this build, in `flashlab list` order: index 0 .. flashlab_variant_count() - 1. */
FLASHLAB_API int flashlab_variant_count(void);
FLASHLAB_API const char* flashlab_variant_id(int index);

/* Whether `variant` runs the problem in `dtype` (FLASHLAB_ERROR_UNSUPPORTED with the reason otherwise), and the
 * workspace bytes one launch of `pass` allocates. */
FLASHLAB_API flashlab_status flashlab_supports(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                  flashlab_pass pass);
FLASHLAB_API flashlab_status flashlab_workspace_bytes(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                         flashlab_pass pass, size_t* bytes);

/* One launch on `stream` (a cudaStream_t, NULL for the default stream; ignored by CPU variants). */
FLASHLAB_API flashlab_status flashlab_forward(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                 const flashlab_tensors* tensors, void* stream, const flashlab_workspace* workspace);
FLASHLAB_API flashlab_status flashlab_backward(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                  const flashlab_tensors* tensors, void* stream, const flashlab_workspace* workspace);

/* The calls above with the problem's extension `ext` (NULL: as the calls without _ext). Minor 1. */
FLASHLAB_API flashlab_status flashlab_supports_ext(const char* variant, const flashlab_problem* problem,
                                                   const flashlab_problem_ext* ext, flashlab_dtype dtype,
                                                   flashlab_pass pass);
FLASHLAB_API flashlab_status flashlab_workspace_bytes_ext(const char* variant, const flashlab_problem* problem,
                                                          const flashlab_problem_ext* ext, flashlab_dtype dtype,
                                                          flashlab_pass pass, size_t* bytes);
FLASHLAB_API flashlab_status flashlab_forward_ext(const char* variant, const flashlab_problem* problem,
                                                  const flashlab_problem_ext* ext, flashlab_dtype dtype,
                                                  const flashlab_tensors* tensors, void* stream,
                                                  const flashlab_workspace* workspace);
FLASHLAB_API flashlab_status flashlab_backward_ext(const char* variant, const flashlab_problem* problem,
                                                   const flashlab_problem_ext* ext, flashlab_dtype dtype,
                                                   const flashlab_tensors* tensors, void* stream,
                                                   const flashlab_workspace* workspace);

/* Dropout's keep mask of query head `head` of batch entry `batch_index` (of `heads` query heads): keep[i seqlen_k + j]
 * = 1 when weight (query row i, key j) is kept, 0 when dropped, for rows 0 .. seqlen_q - 1 and keys
 * 0 .. seqlen_k - 1 of that sequence (host memory, seqlen_q seqlen_k bytes). The mask every variant applies for
 * (dropout_p, dropout_seed, dropout_offset); dropout_p = 0 keeps every weight. A key-padded batch entry (valid tokens
 * one interval of its N) draws its mask inside the interval: its mask is this call's with seqlen_q = seqlen_k = the
 * valid length, placed at the valid tokens, as in its unpadded varlen form. Which Philox bits make the mask is the
 * library's definition, not part of the ABI (abi/README.md): this call reproduces it. Minor 1. */
FLASHLAB_API flashlab_status flashlab_dropout_mask(double dropout_p, uint64_t dropout_seed, uint64_t dropout_offset,
                                                   int64_t batch_index, int64_t head, int64_t heads, int64_t seqlen_q,
                                                   int64_t seqlen_k, uint8_t* keep);

#ifdef __cplusplus
}
#endif

#endif /* FLASHLAB_FLASHLAB_H */
