#include "flashlab/core/flops.hpp"

#include <stdexcept>
#include <string>

namespace flashlab {

std::string_view name(Pass pass) {
  switch (pass) {
    case Pass::fwd: return "fwd";
    case Pass::bwd: return "bwd";
    case Pass::fwdbwd: return "fwdbwd";
  }
  return "?";
}

Pass parse_pass(std::string_view text) {
  for (Pass pass : {Pass::fwd, Pass::bwd, Pass::fwdbwd}) {
    if (name(pass) == text) return pass;
  }
  throw std::invalid_argument("unknown pass '" + std::string(text) + "': expected one of fwd, bwd, fwdbwd");
}

double convention_pairs(const Problem& problem) {
  // The causal mask however written: causal, or a window (-1, 0), or both.
  const Window w = problem.effective_window();
  const bool plain_causal = w.left < 0 && w.right == 0;
  if (!plain_causal) return static_cast<double>(problem.unmasked_pairs());
  double pairs = 0;
  for (std::int64_t b = 0; b < problem.batch; ++b) {
    const Sequence s = problem.sequence(b);
    if (s.seqlen_q == s.seqlen_k) {  // key padding: the valid tokens, as the unpadded varlen problem counts them
      const auto valid = static_cast<double>(s.seqlen_q - s.pad_front - s.pad_back);
      pairs += 0.5 * valid * valid;
    } else {
      for (std::int64_t i = 0; i < s.seqlen_q; ++i) pairs += static_cast<double>(problem.key_range(s, i).size());
    }
  }
  return pairs;
}

double attention_flops(const Problem& problem, Pass pass) {
  const double forward = 2.0 * static_cast<double>(problem.head_dim + problem.dv()) *
                         static_cast<double>(problem.heads) * convention_pairs(problem);
  switch (pass) {
    case Pass::fwd: return forward;
    case Pass::bwd: return 2.5 * forward;
    case Pass::fwdbwd: return 3.5 * forward;
  }
  return forward;
}

}  // namespace flashlab
