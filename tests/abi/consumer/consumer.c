/* Calls libflashlab through its installed C header: the fp64 reference (cpu-reference, FLASHLAB_FP64) forward and
 * backward against a naive computation here, dense GQA and varlen with an empty sequence, cpu-standard in fp32,
 * the caller's workspace callbacks, dropout (the naive computation under flashlab_dropout_mask's mask), and the error
 * codes with their messages. Exit 0 when every check holds. */
#include <flashlab/flashlab.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      ++failures;                                           \
      fprintf(stderr, "consumer: %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                         \
      fprintf(stderr, "\n");                                \
    }                                                       \
  } while (0)

/* workspace callbacks: count what the library takes */
static size_t live = 0, peak = 0, calls = 0;
typedef struct {
  size_t bytes;
  double align;
} header_t;
static void* take(size_t bytes, void* user) {
  (void)user;
  header_t* h = malloc(sizeof(header_t) + bytes);
  if (!h) return NULL;
  h->bytes = bytes;
  live += bytes;
  if (live > peak) peak = live;
  ++calls;
  return h + 1;
}
static void give(void* p, void* user) {
  (void)user;
  header_t* h = (header_t*)p - 1;
  live -= h->bytes;
  free(h);
}

static double uniform(unsigned* state) {
  *state = *state * 1664525u + 1013904223u;
  return (double)(*state >> 8) / 16777216.0 * 2.0 - 1.0;
}

/* naive attention of a dense batch (BSHD, contiguous), fp64. With `keep` (the keep mask [B, H, N, N], 1 kept) dropout
 * with probability `p`: O = (Z o P / (1 - p)) V, dP = Z o (dO V^T) / (1 - p), dS = P o (dP - D), D = dO . O,
 * dV = (Z o P / (1 - p))^T dO. */
static void naive(int B, int H, int Hkv, int N, int d, const double* q, const double* k, const double* v,
                  const double* dout, const unsigned char* keep, double p_drop, double* o, double* lse, double* dq,
                  double* dk, double* dv) {
  const double scale = 1.0 / sqrt((double)d);
  double* p = malloc(sizeof(double) * N);
  double* z = malloc(sizeof(double) * N); /* Z_ij / (1 - p), 1 without dropout */
  double* dp = malloc(sizeof(double) * N);
  memset(dk, 0, sizeof(double) * B * N * Hkv * d);
  memset(dv, 0, sizeof(double) * B * N * Hkv * d);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / Hkv);
      for (int i = 0; i < N; ++i) {
        const double* qi = q + ((b * N + i) * H + h) * d;
        double m = -INFINITY, l = 0;
        for (int j = 0; j < N; ++j) {
          double s = 0;
          for (int c = 0; c < d; ++c) s += qi[c] * k[((b * N + j) * Hkv + g) * d + c];
          p[j] = s * scale;
          if (p[j] > m) m = p[j];
        }
        for (int j = 0; j < N; ++j) l += (p[j] = exp(p[j] - m));
        for (int j = 0; j < N; ++j) p[j] /= l;
        lse[(b * H + h) * N + i] = m + log(l);
        for (int j = 0; j < N; ++j) z[j] = keep ? keep[((b * H + h) * N + i) * N + j] / (1.0 - p_drop) : 1.0;
        double D = 0;
        for (int c = 0; c < d; ++c) {
          double acc = 0;
          for (int j = 0; j < N; ++j) acc += z[j] * p[j] * v[((b * N + j) * Hkv + g) * d + c];
          o[((b * N + i) * H + h) * d + c] = acc;
          D += acc * dout[((b * N + i) * H + h) * d + c];
        }
        for (int j = 0; j < N; ++j) {
          double s = 0;
          for (int c = 0; c < d; ++c) s += dout[((b * N + i) * H + h) * d + c] * v[((b * N + j) * Hkv + g) * d + c];
          dp[j] = p[j] * (z[j] * s - D); /* dS */
        }
        for (int c = 0; c < d; ++c) {
          double acc = 0;
          for (int j = 0; j < N; ++j) acc += dp[j] * k[((b * N + j) * Hkv + g) * d + c];
          dq[((b * N + i) * H + h) * d + c] = acc * scale;
        }
        for (int j = 0; j < N; ++j)
          for (int c = 0; c < d; ++c) {
            dk[((b * N + j) * Hkv + g) * d + c] += dp[j] * qi[c] * scale;
            dv[((b * N + j) * Hkv + g) * d + c] += z[j] * p[j] * dout[((b * N + i) * H + h) * d + c];
          }
      }
    }
  free(p);
  free(z);
  free(dp);
}

static double max_diff(const double* a, const double* b, int n) {
  double m = 0;
  for (int e = 0; e < n; ++e) m = fmax(m, fabs(a[e] - b[e]));
  return m;
}

int main(void) {
  EXPECT(flashlab_abi_version() == FLASHLAB_ABI_VERSION, "ABI version %d, header %d", flashlab_abi_version(),
         FLASHLAB_ABI_VERSION);
  int reference_found = 0;
  for (int i = 0; i < flashlab_variant_count(); ++i) reference_found |= strcmp(flashlab_variant_id(i), "cpu-reference") == 0;
  EXPECT(reference_found, "cpu-reference is not among the %d variants", flashlab_variant_count());

  enum { B = 2, H = 4, Hkv = 2, N = 9, D = 8 };
  const int nq = B * N * H * D, nk = B * N * Hkv * D, nl = B * H * N;
  double q[B * N * H * D], k[B * N * Hkv * D], v[B * N * Hkv * D], dout[B * N * H * D];
  unsigned state = 7;
  for (int e = 0; e < nq; ++e) q[e] = uniform(&state), dout[e] = uniform(&state);
  for (int e = 0; e < nk; ++e) k[e] = uniform(&state), v[e] = uniform(&state);
  double o[B * N * H * D], dq[B * N * H * D], dk[B * N * Hkv * D], dv[B * N * Hkv * D], lse_want[B * H * N];
  double o_want[B * N * H * D], dq_want[B * N * H * D], dk_want[B * N * Hkv * D], dv_want[B * N * Hkv * D];
  float lse[B * H * N];
  naive(B, H, Hkv, N, D, q, k, v, dout, NULL, 0, o_want, lse_want, dq_want, dk_want, dv_want);

  flashlab_problem p = {.batch = B, .heads = H, .heads_kv = Hkv, .seqlen_q = N, .seqlen_k = N, .head_dim = D,
                        .window_left = -1, .window_right = -1};
  flashlab_tensors t = {.q = q, .k = k, .v = v, .o = o, .lse = lse, .d_out = dout, .dq = dq, .dk = dk, .dv = dv};
  flashlab_workspace w = {take, give, NULL};
  size_t model = 0;
  EXPECT(flashlab_workspace_bytes("cpu-reference", &p, FLASHLAB_FP64, FLASHLAB_BACKWARD, &model) == FLASHLAB_OK, "%s",
         flashlab_last_error());
  EXPECT(flashlab_forward("cpu-reference", &p, FLASHLAB_FP64, &t, NULL, &w) == FLASHLAB_OK, "forward: %s",
         flashlab_last_error());
  EXPECT(max_diff(o, o_want, nq) < 1e-13, "O differs from the naive fp64 attention by %g", max_diff(o, o_want, nq));
  double lse_d[B * H * N];
  for (int e = 0; e < nl; ++e) lse_d[e] = lse[e];
  EXPECT(max_diff(lse_d, lse_want, nl) < 1e-6, "LSE (float32) differs by %g", max_diff(lse_d, lse_want, nl));
  peak = 0;
  EXPECT(flashlab_backward("cpu-reference", &p, FLASHLAB_FP64, &t, NULL, &w) == FLASHLAB_OK, "backward: %s",
         flashlab_last_error());
  /* the backward recomputes P from the float32 LSE: errors at fp32's level */
  EXPECT(max_diff(dq, dq_want, nq) < 1e-5, "dQ differs by %g", max_diff(dq, dq_want, nq));
  EXPECT(max_diff(dk, dk_want, nk) < 1e-5, "dK differs by %g", max_diff(dk, dk_want, nk));
  EXPECT(max_diff(dv, dv_want, nk) < 1e-5, "dV differs by %g", max_diff(dv, dv_want, nk));
  EXPECT(live == 0, "%zu workspace bytes not released", live);
  EXPECT(calls > 0 && peak == model, "workspace peak %zu, model %zu (%zu allocations)", peak, model, calls);

  /* cpu-standard in fp32 on the same inputs, rounded */
  float qf[B * N * H * D], kf[B * N * Hkv * D], vf[B * N * Hkv * D], of[B * N * H * D];
  for (int e = 0; e < nq; ++e) qf[e] = (float)q[e];
  for (int e = 0; e < nk; ++e) kf[e] = (float)k[e], vf[e] = (float)v[e];
  flashlab_tensors tf = {.q = qf, .k = kf, .v = vf, .o = of, .lse = lse};
  EXPECT(flashlab_forward("cpu-standard", &p, FLASHLAB_FP32, &tf, NULL, NULL) == FLASHLAB_OK, "fp32: %s",
         flashlab_last_error());
  double ofd[B * N * H * D];
  for (int e = 0; e < nq; ++e) ofd[e] = of[e];
  EXPECT(max_diff(ofd, o_want, nq) < 1e-5, "fp32 O differs by %g", max_diff(ofd, o_want, nq));

  /* varlen: lengths {N, 0} (an empty sequence) equal the dense batch entry 0 */
  int64_t lengths[2] = {N, 0};
  flashlab_problem pv = p;
  pv.seqlens_q = lengths;
  pv.seqlens_k = lengths;
  double ov[N * H * D];
  float lsev[H * N];
  flashlab_tensors tv = {.q = q, .k = k, .v = v, .o = ov, .lse = lsev};
  EXPECT(flashlab_forward("cpu-reference", &pv, FLASHLAB_FP64, &tv, NULL, NULL) == FLASHLAB_OK, "varlen: %s",
         flashlab_last_error());
  EXPECT(max_diff(ov, o_want, N * H * D) < 1e-13, "varlen O differs by %g", max_diff(ov, o_want, N * H * D));

  /* dropout (minor 1): the reference under flashlab_dropout_mask's mask equals the naive computation under it */
  EXPECT(flashlab_abi_minor() >= 1, "ABI minor %d, dropout needs 1", flashlab_abi_minor());
  {
    const double p_drop = 0.3;
    flashlab_problem_ext e = {.size = sizeof(e)};
    e.dropout_p = p_drop;
    e.dropout_seed = 0x0123456789abcdefull;
    e.dropout_offset = 5;
    static unsigned char keep[B * H * N * N];
    int kept = 0;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        EXPECT(flashlab_dropout_mask(p_drop, e.dropout_seed, e.dropout_offset, b, h, H, N, N,
                                     keep + (b * H + h) * N * N) == FLASHLAB_OK,
               "mask: %s", flashlab_last_error());
    for (int e2 = 0; e2 < B * H * N * N; ++e2) kept += keep[e2];
    /* 648 weights kept with probability 0.7: mean 453.6, sigma 11.7; 5 sigmas */
    EXPECT(fabs(kept - 0.7 * B * H * N * N) < 5 * sqrt(0.7 * 0.3 * B * H * N * N), "kept %d of %d", kept, B * H * N * N);
    naive(B, H, Hkv, N, D, q, k, v, dout, keep, p_drop, o_want, lse_want, dq_want, dk_want, dv_want);
    EXPECT(flashlab_forward_ext("cpu-reference", &p, &e, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_OK,
           "dropout forward: %s", flashlab_last_error());
    EXPECT(max_diff(o, o_want, nq) < 1e-13, "dropout O differs from the naive one by %g", max_diff(o, o_want, nq));
    for (int e2 = 0; e2 < nl; ++e2) lse_d[e2] = lse[e2];
    EXPECT(max_diff(lse_d, lse_want, nl) < 1e-6, "dropout LSE differs by %g", max_diff(lse_d, lse_want, nl));
    EXPECT(flashlab_backward_ext("cpu-reference", &p, &e, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_OK,
           "dropout backward: %s", flashlab_last_error());
    EXPECT(max_diff(dq, dq_want, nq) < 1e-5, "dropout dQ differs by %g", max_diff(dq, dq_want, nq));
    EXPECT(max_diff(dk, dk_want, nk) < 1e-5, "dropout dK differs by %g", max_diff(dk, dk_want, nk));
    EXPECT(max_diff(dv, dv_want, nk) < 1e-5, "dropout dV differs by %g", max_diff(dv, dv_want, nk));
    /* another offset, another mask: O changes */
    double o_first[B * N * H * D];
    memcpy(o_first, o, sizeof(o));
    e.dropout_offset += B * H;
    EXPECT(flashlab_forward_ext("cpu-reference", &p, &e, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_OK, "%s",
           flashlab_last_error());
    EXPECT(max_diff(o, o_first, nq) > 1e-3, "offset + B H gives the same O");
    /* a caller of an older minor: fields past its size read as 0 (no dropout), and ext NULL is the plain call */
    naive(B, H, Hkv, N, D, q, k, v, dout, NULL, 0, o_want, lse_want, dq_want, dk_want, dv_want);
    flashlab_problem_ext old = e;
    old.size = sizeof(old.size);
    EXPECT(flashlab_forward_ext("cpu-reference", &p, &old, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_OK, "%s",
           flashlab_last_error());
    EXPECT(max_diff(o, o_want, nq) < 1e-13, "a size-only ext still drops (O differs by %g)", max_diff(o, o_want, nq));
    EXPECT(flashlab_forward_ext("cpu-reference", &p, NULL, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_OK, "%s",
           flashlab_last_error());
    EXPECT(max_diff(o, o_want, nq) < 1e-13, "ext NULL: O differs by %g", max_diff(o, o_want, nq));
    /* p = 0 keeps every weight */
    EXPECT(flashlab_dropout_mask(0.0, 1, 2, 0, 0, H, N, N, keep) == FLASHLAB_OK, "%s", flashlab_last_error());
    kept = 0;
    for (int e2 = 0; e2 < N * N; ++e2) kept += keep[e2];
    EXPECT(kept == N * N, "p = 0 kept %d of %d", kept, N * N);
    /* p outside [0, 1): the code and a message naming dropout */
    const double bad_p[3] = {1.0, -0.1, NAN};
    for (int c = 0; c < 3; ++c) {
      e.dropout_p = bad_p[c];
      EXPECT(flashlab_forward_ext("cpu-reference", &p, &e, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_ERROR_INVALID,
             "p = %g accepted", bad_p[c]);
      EXPECT(strstr(flashlab_last_error(), "dropout") != NULL, "message: %s", flashlab_last_error());
      EXPECT(flashlab_dropout_mask(bad_p[c], 1, 2, 0, 0, H, N, N, keep) == FLASHLAB_ERROR_INVALID, "mask p = %g",
             bad_p[c]);
      EXPECT(strstr(flashlab_last_error(), "dropout") != NULL, "message: %s", flashlab_last_error());
    }
    e.size = 0;
    EXPECT(flashlab_supports_ext("cpu-reference", &p, &e, FLASHLAB_FP64, FLASHLAB_FORWARD) == FLASHLAB_ERROR_INVALID,
           "ext size 0 accepted");
    EXPECT(flashlab_dropout_mask(0.5, 1, 2, 0, H, H, N, N, keep) == FLASHLAB_ERROR_INVALID, "head == heads accepted");
  }

  /* errors: a code and one line naming the problem */
  EXPECT(flashlab_forward("no-such", &p, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_ERROR_INVALID, "unknown variant");
  EXPECT(strstr(flashlab_last_error(), "no-such") != NULL, "message: %s", flashlab_last_error());
  flashlab_problem bad = p;
  bad.heads_kv = 3;
  EXPECT(flashlab_forward("cpu-reference", &bad, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_ERROR_INVALID, "heads_kv 3");
  EXPECT(strstr(flashlab_last_error(), "heads_kv") != NULL, "message: %s", flashlab_last_error());
  EXPECT(flashlab_forward("cpu-reference[deterministic=1]", &p, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_ERROR_INVALID,
         "an option cpu-reference does not have");
  EXPECT(flashlab_forward("cpu-reference", &p, FLASHLAB_FP64, NULL, NULL, NULL) == FLASHLAB_ERROR_INVALID, "null tensors");
  EXPECT(flashlab_forward("cpu-reference", &p, FLASHLAB_FP64, &t, NULL, NULL) == FLASHLAB_OK &&
             flashlab_last_error()[0] == '\0',
         "a successful call clears the message");

  if (failures == 0) printf("consumer: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
