#include "flashlab/core/tensor.hpp"

namespace flashlab {

AttentionShapes attention_shapes(const Problem& p) {
  const std::int64_t slots = p.is_varlen() ? 1 : p.batch;
  const std::int64_t nq = p.is_varlen() ? p.total_q() : p.seqlen_q;
  const std::int64_t nk = p.is_varlen() ? p.total_k() : p.seqlen_k;
  return {{slots, nq, p.heads, p.head_dim},
          {slots, nk, p.heads_kv, p.head_dim},
          {slots, nk, p.heads_kv, p.dv()},
          {slots, nq, p.heads, p.dv()},
          {slots, p.heads, nq}};
}

std::string to_string(const std::int64_t* extents, int rank) {
  std::string text = "[";
  for (int i = 0; i < rank; ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(extents[i]);
  }
  return text + "]";
}

}  // namespace flashlab
