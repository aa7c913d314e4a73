// The tensors of one row, laid out contiguously (BSHD) wherever they live, and the params pointing at them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashlab/harness/suite.hpp"
#include "flashlab/kernels/attention.hpp"

namespace flashlab::harness {

struct IoTensor {
  std::string name;      // q, k, v, o, lse, d_out, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, valid_lengths
  Shape<4> shape{};      // LSE: [slots, H, N_q, 1]; cu_seqlens: [B+1, 1, 1, 1]; valid_lengths: [B, 1, 1, 1]
  std::int64_t element_bytes = 0;
  [[nodiscard]] std::int64_t bytes() const { return element_count<4>(shape) * element_bytes; }
};

// The row's tensors in allocation order (inputs, outputs, gradients, varlen offsets or key padding's valid lengths).
[[nodiscard]] std::vector<IoTensor> io_tensors(const Problem& problem, DType dtype);
// The int32 tensors of lengths (cu_seqlens_q, cu_seqlens_k, valid_lengths) and their values from the problem.
[[nodiscard]] bool is_length_tensor(const IoTensor& tensor);
[[nodiscard]] std::vector<std::int32_t> length_values(const Problem& problem, const IoTensor& tensor);

// Params over buffers `data[i]` of io_tensors()[i] (contiguous strides).
[[nodiscard]] kernels::AttentionParams make_params(const Problem& problem, DType dtype,
                                                   const std::vector<void*>& data);

// --save-tensors: whether a tensor is saved for `pass` (inputs and outputs; gradients only with a backward),
// and its .npy file from a host copy of its buffer (fp16 as <f2, bf16 widened to float32, LSE float32).
[[nodiscard]] bool saved_tensor(const IoTensor& tensor, Pass pass);
void write_tensor_npy(const std::string& dir, const IoTensor& tensor, const void* host_data, DType dtype);
// --save-tensors, beside the row's own tensors: the fp64 reference outputs of the row's inputs (o_ref, lse_ref; with
// a backward dq_ref, dk_ref, dv_ref; <f8, the shapes of o, lse, dq, dk, dv: the full reference, so as costly as a
// cpu-reference row) and, for a varlen problem, cu_seqlens_q and cu_seqlens_k (<i4, B + 1 offsets), for a key-padding
// problem valid_lengths (<i4, B lengths).
void write_reference_npy(const std::string& dir, const Problem& problem, Pass pass, const InputSpec& inputs);

}  // namespace flashlab::harness

namespace flashlab::harness {

// Where one head of an output lies in its contiguous buffer: `rows` rows of `dim` elements, consecutive
// rows `pitch` elements apart, the first at element `offset`.
struct HeadSlice {
  std::int64_t offset, rows, dim, pitch;
};
// tensor: o, dq (query head), dk, dv (kv head) or lse (query head; dim 1).
[[nodiscard]] HeadSlice head_slice(const Problem& problem, const std::string& tensor, std::int64_t b,
                                   std::int64_t head);
// Throws std::out_of_range unless 0 <= row < slice.rows.
void check_row(std::int64_t row, const HeadSlice& slice, const std::string& tensor);

// The head's rows `rows` (each checked; every row when null) as rows x dim doubles, row-major: value(row, c) reads
// entry c of the head's row `row`.
template <class Value>
std::vector<double> read_rows(const HeadSlice& slice, const std::vector<std::int64_t>* rows, const std::string& tensor,
                              Value value) {
  const std::int64_t count = rows ? static_cast<std::int64_t>(rows->size()) : slice.rows;
  std::vector<double> out(static_cast<std::size_t>(count * slice.dim));
  for (std::int64_t r = 0; r < count; ++r) {
    const std::int64_t row = rows ? (*rows)[static_cast<std::size_t>(r)] : r;
    check_row(row, slice, tensor);
    for (std::int64_t c = 0; c < slice.dim; ++c) out[static_cast<std::size_t>(r * slice.dim + c)] = value(row, c);
  }
  return out;
}

}  // namespace flashlab::harness
