// The C ABI (include/flashlab/flashlab.h) over the registry: every call resolves the variant, builds the Problem and
// the launch params, and turns each exception into a status and a per-thread message.
#include "flashlab/flashlab.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "flashlab/core/dropout.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/problem.hpp"
#include "flashlab/core/tensor.hpp"
#include "flashlab/harness/registry.hpp"

namespace {

using flashlab::kernels::AttentionParams;
using flashlab::kernels::Variant;

thread_local std::string last_error;

flashlab_status fail(flashlab_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

// The caller's allocate / release, or plain host memory.
class CallbackAllocator final : public flashlab::Allocator {
 public:
  explicit CallbackAllocator(const flashlab_workspace* w) : w_(w ? *w : flashlab_workspace{}) {}
  void* allocate(std::size_t bytes, std::string_view what) override {
    void* p = w_.allocate ? w_.allocate(bytes, w_.user) : ::operator new(bytes, std::nothrow);
    if (p == nullptr) {
      throw flashlab::OutOfMemory("workspace allocation of " + std::to_string(bytes) + " bytes for " +
                                  std::string(what) + " failed");
    }
    return p;
  }
  void release(void* pointer) noexcept override {
    if (w_.release) {
      w_.release(pointer, w_.user);
    } else if (!w_.allocate) {
      ::operator delete(pointer);
    }
  }

 private:
  flashlab_workspace w_;
};

flashlab::DType dtype_of(flashlab_dtype d) {
  switch (d) {
    case FLASHLAB_FP64: return flashlab::DType::fp64;
    case FLASHLAB_FP32: return flashlab::DType::fp32;
    case FLASHLAB_FP16: return flashlab::DType::fp16;
    case FLASHLAB_BF16: return flashlab::DType::bf16;
  }
  throw flashlab::InvalidProblem("dtype", "dtype " + std::to_string(static_cast<int>(d)) +
                                              " is not a flashlab_dtype (FLASHLAB_FP64, _FP32, _FP16, _BF16)");
}

flashlab::Pass pass_of(flashlab_pass p) {
  if (p == FLASHLAB_FORWARD) return flashlab::Pass::fwd;
  if (p == FLASHLAB_BACKWARD) return flashlab::Pass::bwd;
  throw flashlab::InvalidProblem("pass", "pass " + std::to_string(static_cast<int>(p)) +
                                             " is not FLASHLAB_FORWARD or FLASHLAB_BACKWARD");
}

// The caller's extension, its fields past the caller's `size` read as 0 (a caller built against an older minor).
flashlab_problem_ext ext_of(const flashlab_problem_ext* e) {
  flashlab_problem_ext out{};
  out.size = sizeof(out);
  if (e == nullptr) return out;
  if (e->size < sizeof(e->size)) {
    throw flashlab::InvalidProblem("ext", "ext->size " + std::to_string(e->size) +
                                              " is not the caller's sizeof(flashlab_problem_ext)");
  }
  std::memcpy(reinterpret_cast<char*>(&out) + sizeof(out.size), reinterpret_cast<const char*>(e) + sizeof(e->size),
              std::min(e->size, sizeof(out)) - sizeof(out.size));
  return out;
}

flashlab::Problem problem_of(const flashlab_problem* c, const flashlab_problem_ext* e = nullptr) {
  if (c == nullptr) throw flashlab::InvalidProblem("problem", "problem is null");
  flashlab::Problem p;
  if (c->seqlens_q != nullptr || c->seqlens_k != nullptr) {
    if (c->seqlens_q == nullptr || c->seqlens_k == nullptr) {
      throw flashlab::InvalidProblem("seqlens_q", "a varlen problem gives both seqlens_q and seqlens_k");
    }
    if (c->batch < 1) throw flashlab::InvalidProblem("batch", "batch " + std::to_string(c->batch) + " must be >= 1");
    const std::vector<std::int64_t> q(c->seqlens_q, c->seqlens_q + c->batch), k(c->seqlens_k, c->seqlens_k + c->batch);
    p = flashlab::Problem::varlen(c->heads, c->heads_kv, c->head_dim, q, k);
  } else {
    p.batch = c->batch;
    p.heads = c->heads;
    p.heads_kv = c->heads_kv;
    p.seqlen_q = c->seqlen_q;
    p.seqlen_k = c->seqlen_k;
    p.head_dim = c->head_dim;
  }
  p.head_dim_v = c->head_dim_v;
  p.causal = c->causal != 0;
  p.window = {c->window_left, c->window_right};
  if (c->softmax_scale > 0) p.softmax_scale = c->softmax_scale;
  const flashlab_problem_ext ext = ext_of(e);
  p.dropout = {ext.dropout_p, ext.dropout_seed, ext.dropout_offset};
  p.validate();
  return p;
}

const Variant& variant_of(const char* name, flashlab::harness::VariantChoice& choice) {
  if (name == nullptr) throw flashlab::InvalidProblem("variant", "variant is null");
  choice = flashlab::harness::resolve_variant(name);
  if (choice.variant == nullptr) {
    throw flashlab::InvalidProblem("variant", choice.error + " (variants: " + flashlab::harness::variant_id_list() + ")");
  }
  return *choice.variant;
}

flashlab::kernels::Strides strides_or(const flashlab_strides& s, const flashlab::Shape<4>& shape) {
  if (s.batch == 0 && s.token == 0 && s.head == 0) return flashlab::kernels::contiguous_bshd(shape[1], shape[2], shape[3]);
  return {s.batch, s.token, s.head};
}

// Runs `body`, mapping flashlab's exceptions to statuses.
template <class Body>
flashlab_status guarded(Body body) {
  try {
    body();
    last_error.clear();
    return FLASHLAB_OK;
  } catch (const flashlab::InvalidProblem& e) {
    return fail(FLASHLAB_ERROR_INVALID, e.what());
  } catch (const flashlab::Unsupported& e) {
    return fail(FLASHLAB_ERROR_UNSUPPORTED, e.what());
  } catch (const flashlab::OutOfMemory& e) {
    return fail(FLASHLAB_ERROR_OUT_OF_MEMORY, e.what());
  } catch (const flashlab::CudaError& e) {
    return fail(FLASHLAB_ERROR_CUDA, e.what());
  } catch (const std::exception& e) {
    return fail(FLASHLAB_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(FLASHLAB_ERROR_INTERNAL, "unknown exception");
  }
}

flashlab_status launch(const char* name, const flashlab_problem* cp, const flashlab_problem_ext* ext, flashlab_dtype cd,
                       const flashlab_tensors* t, void* stream, const flashlab_workspace* workspace,
                       flashlab::Pass pass) {
  return guarded([&] {
    flashlab::harness::VariantChoice choice;
    const Variant& v = variant_of(name, choice);
    if (t == nullptr) throw flashlab::InvalidProblem("tensors", "tensors is null");
    AttentionParams params;
    params.problem = problem_of(cp, ext);
    params.dtype = dtype_of(cd);
    const flashlab::kernels::Support support = v.supports(params.problem, params.dtype, pass);
    if (!support.ok) throw flashlab::Unsupported(support.reason);
    flashlab::harness::apply_options(choice, params);
    const flashlab::AttentionShapes s = flashlab::attention_shapes(params.problem);
    params.q = t->q;
    params.k = t->k;
    params.v = t->v;
    params.o = t->o;
    params.lse = t->lse;
    params.d_out = t->d_out;
    params.dq = t->dq;
    params.dk = t->dk;
    params.dv = t->dv;
    params.q_strides = strides_or(t->q_strides, s.q);
    params.k_strides = strides_or(t->k_strides, s.k);
    params.v_strides = strides_or(t->v_strides, s.v);
    params.o_strides = strides_or(t->o_strides, s.o);
    params.d_out_strides = strides_or(t->d_out_strides, s.o);
    params.dq_strides = strides_or(t->dq_strides, s.q);
    params.dk_strides = strides_or(t->dk_strides, s.k);
    params.dv_strides = strides_or(t->dv_strides, s.v);
    std::vector<std::int32_t> host_q, host_k;  // CPU variants: the offsets from the problem when none are given
    params.cu_seqlens_q = t->cu_seqlens_q;
    params.cu_seqlens_k = t->cu_seqlens_k;
    if (params.problem.is_varlen() && params.cu_seqlens_q == nullptr && v.device == flashlab::kernels::Device::cpu) {
      host_q.assign(params.problem.cu_seqlens_q.begin(), params.problem.cu_seqlens_q.end());
      host_k.assign(params.problem.cu_seqlens_k.begin(), params.problem.cu_seqlens_k.end());
      params.cu_seqlens_q = host_q.data();
      params.cu_seqlens_k = host_k.data();
    }
    CallbackAllocator allocator(workspace);
    const flashlab::kernels::LaunchContext ctx{allocator, stream};
    if (pass == flashlab::Pass::fwd) {
      v.forward(params, ctx);
    } else {
      v.backward(params, ctx);
    }
  });
}

}  // namespace

extern "C" {

int flashlab_abi_version(void) { return FLASHLAB_ABI_VERSION; }

int flashlab_abi_minor(void) { return FLASHLAB_ABI_MINOR; }

const char* flashlab_last_error(void) { return last_error.c_str(); }

int flashlab_variant_count(void) { return static_cast<int>(flashlab::harness::variants().size()); }

const char* flashlab_variant_id(int index) {
  const auto& all = flashlab::harness::variants();
  if (index < 0 || index >= static_cast<int>(all.size())) return nullptr;
  return all[static_cast<std::size_t>(index)].id.c_str();
}

flashlab_status flashlab_supports_ext(const char* variant, const flashlab_problem* problem,
                                      const flashlab_problem_ext* ext, flashlab_dtype dtype, flashlab_pass pass) {
  return guarded([&] {
    flashlab::harness::VariantChoice choice;
    const Variant& v = variant_of(variant, choice);
    const flashlab::kernels::Support s = v.supports(problem_of(problem, ext), dtype_of(dtype), pass_of(pass));
    if (!s.ok) throw flashlab::Unsupported(s.reason);
  });
}

flashlab_status flashlab_supports(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                  flashlab_pass pass) {
  return flashlab_supports_ext(variant, problem, nullptr, dtype, pass);
}

flashlab_status flashlab_workspace_bytes_ext(const char* variant, const flashlab_problem* problem,
                                             const flashlab_problem_ext* ext, flashlab_dtype dtype, flashlab_pass pass,
                                             size_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) throw flashlab::InvalidProblem("bytes", "bytes is null");
    flashlab::harness::VariantChoice choice;
    const Variant& v = variant_of(variant, choice);
    *bytes = static_cast<size_t>(v.workspace_model(problem_of(problem, ext), dtype_of(dtype), pass_of(pass)));
  });
}

flashlab_status flashlab_workspace_bytes(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                         flashlab_pass pass, size_t* bytes) {
  return flashlab_workspace_bytes_ext(variant, problem, nullptr, dtype, pass, bytes);
}

flashlab_status flashlab_forward_ext(const char* variant, const flashlab_problem* problem,
                                     const flashlab_problem_ext* ext, flashlab_dtype dtype,
                                     const flashlab_tensors* tensors, void* stream,
                                     const flashlab_workspace* workspace) {
  return launch(variant, problem, ext, dtype, tensors, stream, workspace, flashlab::Pass::fwd);
}

flashlab_status flashlab_forward(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                 const flashlab_tensors* tensors, void* stream, const flashlab_workspace* workspace) {
  return launch(variant, problem, nullptr, dtype, tensors, stream, workspace, flashlab::Pass::fwd);
}

flashlab_status flashlab_backward_ext(const char* variant, const flashlab_problem* problem,
                                      const flashlab_problem_ext* ext, flashlab_dtype dtype,
                                      const flashlab_tensors* tensors, void* stream,
                                      const flashlab_workspace* workspace) {
  return launch(variant, problem, ext, dtype, tensors, stream, workspace, flashlab::Pass::bwd);
}

flashlab_status flashlab_backward(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                  const flashlab_tensors* tensors, void* stream, const flashlab_workspace* workspace) {
  return launch(variant, problem, nullptr, dtype, tensors, stream, workspace, flashlab::Pass::bwd);
}

flashlab_status flashlab_dropout_mask(double dropout_p, uint64_t dropout_seed, uint64_t dropout_offset,
                                      int64_t batch_index, int64_t head, int64_t heads, int64_t seqlen_q,
                                      int64_t seqlen_k, uint8_t* keep) {
  return guarded([&] {
    // the Problem's own rule for p, so the message is the one a launch gives
    flashlab::Problem check;
    check.batch = check.heads = check.heads_kv = check.seqlen_q = check.seqlen_k = check.head_dim = 1;
    check.dropout.p = dropout_p;
    check.validate();
    if (heads < 1 || head < 0 || head >= heads || batch_index < 0) {
      throw flashlab::InvalidProblem("head", "batch_index " + std::to_string(batch_index) + ", head " +
                                                 std::to_string(head) + " of " + std::to_string(heads) +
                                                 " heads: need batch_index >= 0 and 0 <= head < heads");
    }
    constexpr std::int64_t kMaxLength = std::int64_t{1} << 31;  // rows and keys are 32-bit in the counter
    if (seqlen_q < 0 || seqlen_k < 0 || seqlen_q > kMaxLength || seqlen_k > kMaxLength) {
      throw flashlab::InvalidProblem("seqlen_q", "seqlen_q " + std::to_string(seqlen_q) + ", seqlen_k " +
                                                     std::to_string(seqlen_k) + " must be in [0, 2^31]");
    }
    if (keep == nullptr && seqlen_q * seqlen_k > 0) throw flashlab::InvalidProblem("keep", "keep is null");
    const flashlab::DropoutSpec spec{dropout_p, dropout_seed, dropout_offset};
    const std::uint32_t threshold = flashlab::dropout_keep_threshold16(dropout_p);
    const auto subsequence = static_cast<std::uint64_t>(batch_index * heads + head);
    for (std::int64_t i = 0; i < seqlen_q; ++i) {
      for (std::int64_t j = 0; j < seqlen_k; ++j) {
        keep[i * seqlen_k + j] =
            !spec.active() || flashlab::dropout_keep(spec.seed, spec.offset, subsequence, static_cast<std::uint32_t>(i),
                                                     static_cast<std::uint32_t>(j), threshold);
      }
    }
  });
}

}  // extern "C"
