// Exact attention of one (sequence, kv head) group at chosen entries, and a-priori error bounds there.
//
// A group is one sequence's G = H / H_kv query heads and their kv head. Verification compares a variant's outputs
// with the fp64 reference at chosen query rows (O, LSE, dQ of every query head of the group) and chosen key rows
// (dK, dV of the kv head): every row for small problems, a seeded sample for large ones. Each chosen entry is exact:
// a query row's outputs need only that row against all its keys; a key row's gradients need every query row's LSE
// and D = rowsum(dO o O), so a backward check runs the group's forward over all query rows first.
//
// The same entries are also computed in fp32 arithmetic (FlashAttention's upcast reference: inputs as given, every
// operation in fp32, outputs rounded to the output dtype), and the a-priori bounds of any number of data paths
// (numerics::DataPath) are evaluated from the exact quantities: the derivation, term by term, is NUMERICS.md.
// Dropout (problem.dropout): the same mask as the kernels; the bounds treat Z o P / (1 - p) as the numerator's
// weights (the denominator l keeps every weight) and add two fp32 roundings for the factor 1 / (1 - p) and its
// product (NUMERICS.md, "Dropout").
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/numerics.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab::reference {

// The group's inputs in double, row-major: q and d_out [G][N_q][d or d_v], k [N_k][d], v [N_k][d_v]; d_out may be
// empty for a forward-only check.
struct GroupInputs {
  // batch 1, heads G, heads_kv 1, the sequence's lengths, the scale made explicit; the dropout of the full problem
  // with b H + g G added to its offset, so that query head h of the group draws the mask of head g G + h of sequence
  // b (core/dropout.hpp: the offset adds to the (batch, head) subsequence); with the sequence's key padding, the
  // mask is drawn inside its valid interval (dropout_keep_padded)
  Problem problem;
  std::vector<double> q, k, v, d_out;
};

// Chosen entries: query rows (the same for each query head of the group) and key rows, sorted and distinct.
struct RowChoice {
  std::vector<std::int64_t> query;
  std::vector<std::int64_t> key;
};

// Values at the chosen entries, row-major: o [G][|query|][d_v], lse [G][|query|], dq [G][|query|][d],
// dk [|key|][d], dv [|key|][d_v]. Gradients are empty for a forward-only check.
struct GroupOutputs {
  std::vector<double> o, lse, dq, dk, dv;
};

struct PathBounds {
  GroupOutputs deterministic;  // never exceeded (up to the model's assumptions, NUMERICS.md)
  GroupOutputs probabilistic;  // Higham-Mary: each entry's bound holds with probability >= 1 - 2 exp(-lambda^2/2)
};

struct GroupCheck {
  GroupOutputs exact;                 // fp64
  std::optional<GroupOutputs> upcast; // fp32 arithmetic, outputs rounded to the dtype asked for
  std::vector<PathBounds> bounds;     // one per data path, in the order given
};

struct GroupCheckOptions {
  bool backward = false;
  std::optional<DType> upcast;               // compute the fp32-upcast values, rounded to this dtype
  std::vector<numerics::DataPath> paths;     // data paths whose bounds to evaluate
  double lambda = 4.0;                       // of the probabilistic bounds
  // the first this many paths get the probabilistic bound too; the others' PathBounds::probabilistic stays empty
  std::size_t probabilistic_paths = std::numeric_limits<std::size_t>::max();
  int workers = 0;                           // 0: default_worker_count()
};

// Throws InvalidProblem when the inputs do not match the problem (a group: batch 1, heads_kv 1) or a chosen row
// is out of range.
[[nodiscard]] GroupCheck check_group(const GroupInputs& inputs, const RowChoice& rows, const GroupCheckOptions& options);

}  // namespace flashlab::reference
