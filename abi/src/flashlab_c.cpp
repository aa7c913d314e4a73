// The C ABI (include/flashlab/flashlab.h) over the registry: every call resolves the variant, builds the Problem and
// the launch params, and turns each exception into a status and a per-thread message.
#include "flashlab/flashlab.h"

#include <cmath>
#include <new>
#include <string>
#include <vector>

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

flashlab::Problem problem_of(const flashlab_problem* c) {
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

flashlab_status launch(const char* name, const flashlab_problem* cp, flashlab_dtype cd, const flashlab_tensors* t,
                       void* stream, const flashlab_workspace* workspace, flashlab::Pass pass) {
  return guarded([&] {
    flashlab::harness::VariantChoice choice;
    const Variant& v = variant_of(name, choice);
    if (t == nullptr) throw flashlab::InvalidProblem("tensors", "tensors is null");
    AttentionParams params;
    params.problem = problem_of(cp);
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

const char* flashlab_last_error(void) { return last_error.c_str(); }

int flashlab_variant_count(void) { return static_cast<int>(flashlab::harness::variants().size()); }

const char* flashlab_variant_id(int index) {
  const auto& all = flashlab::harness::variants();
  if (index < 0 || index >= static_cast<int>(all.size())) return nullptr;
  return all[static_cast<std::size_t>(index)].id.c_str();
}

flashlab_status flashlab_supports(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                  flashlab_pass pass) {
  return guarded([&] {
    flashlab::harness::VariantChoice choice;
    const Variant& v = variant_of(variant, choice);
    const flashlab::kernels::Support s = v.supports(problem_of(problem), dtype_of(dtype), pass_of(pass));
    if (!s.ok) throw flashlab::Unsupported(s.reason);
  });
}

flashlab_status flashlab_workspace_bytes(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                         flashlab_pass pass, size_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) throw flashlab::InvalidProblem("bytes", "bytes is null");
    flashlab::harness::VariantChoice choice;
    const Variant& v = variant_of(variant, choice);
    *bytes = static_cast<size_t>(v.workspace_model(problem_of(problem), dtype_of(dtype), pass_of(pass)));
  });
}

flashlab_status flashlab_forward(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                 const flashlab_tensors* tensors, void* stream, const flashlab_workspace* workspace) {
  return launch(variant, problem, dtype, tensors, stream, workspace, flashlab::Pass::fwd);
}

flashlab_status flashlab_backward(const char* variant, const flashlab_problem* problem, flashlab_dtype dtype,
                                  const flashlab_tensors* tensors, void* stream, const flashlab_workspace* workspace) {
  return launch(variant, problem, dtype, tensors, stream, workspace, flashlab::Pass::bwd);
}

}  // extern "C"
