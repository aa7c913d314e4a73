#include "flashlab/harness/io_tensors.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <stdexcept>

#include "flashlab/core/storage.hpp"
#include "flashlab/harness/npy.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace flashlab::harness {

std::vector<IoTensor> io_tensors(const Problem& p, DType dtype) {
  const AttentionShapes s = attention_shapes(p);
  const std::int64_t e = size_bytes(dtype);
  std::vector<IoTensor> t = {{"q", s.q, e},     {"k", s.k, e},     {"v", s.v, e},
                             {"o", s.o, e},     {"lse", {s.lse[0], s.lse[1], s.lse[2], 1}, 4},
                             {"d_out", s.o, e}, {"dq", s.q, e},    {"dk", s.k, e}, {"dv", s.v, e}};
  if (p.is_varlen()) {
    t.push_back({"cu_seqlens_q", {p.batch + 1, 1, 1, 1}, 4});
    t.push_back({"cu_seqlens_k", {p.batch + 1, 1, 1, 1}, 4});
  }
  if (p.is_padded()) t.push_back({"valid_lengths", {p.batch, 1, 1, 1}, 4});
  return t;
}

kernels::AttentionParams make_params(const Problem& p, DType dtype, const std::vector<void*>& data) {
  const AttentionShapes s = attention_shapes(p);
  kernels::AttentionParams params;
  params.problem = p;
  params.dtype = dtype;
  params.fault = injected_fault();
  params.q = data[0];
  params.k = data[1];
  params.v = data[2];
  params.o = data[3];
  params.lse = static_cast<float*>(data[4]);
  params.d_out = data[5];
  params.dq = data[6];
  params.dk = data[7];
  params.dv = data[8];
  params.q_strides = params.dq_strides = kernels::contiguous_bshd(s.q[1], s.q[2], s.q[3]);
  params.k_strides = params.dk_strides = kernels::contiguous_bshd(s.k[1], s.k[2], s.k[3]);
  params.v_strides = params.dv_strides = kernels::contiguous_bshd(s.v[1], s.v[2], s.v[3]);
  params.o_strides = params.d_out_strides = kernels::contiguous_bshd(s.o[1], s.o[2], s.o[3]);
  if (p.is_varlen()) {
    params.cu_seqlens_q = static_cast<const std::int32_t*>(data[9]);
    params.cu_seqlens_k = static_cast<const std::int32_t*>(data[10]);
  }
  if (p.is_padded()) params.valid_lengths = static_cast<const std::int32_t*>(data[9]);  // never with varlen
  return params;
}

bool is_length_tensor(const IoTensor& tensor) {
  return tensor.name == "cu_seqlens_q" || tensor.name == "cu_seqlens_k" || tensor.name == "valid_lengths";
}

std::vector<std::int32_t> length_values(const Problem& p, const IoTensor& tensor) {
  const std::vector<std::int64_t>& wide = tensor.name == "cu_seqlens_q"   ? p.cu_seqlens_q
                                          : tensor.name == "cu_seqlens_k" ? p.cu_seqlens_k
                                                                          : p.valid_lengths;
  return {wide.begin(), wide.end()};
}

bool saved_tensor(const IoTensor& tensor, Pass pass) {
  const bool gradient = tensor.name == "d_out" || tensor.name == "dq" || tensor.name == "dk" || tensor.name == "dv";
  return !(gradient && pass == Pass::fwd) && !is_length_tensor(tensor);
}

void write_tensor_npy(const std::string& dir, const IoTensor& tensor, const void* host_data, DType dtype) {
  const bool lse = tensor.name == "lse";
  const std::vector<std::int64_t> shape(tensor.shape.begin(), tensor.shape.end() - (lse ? 1 : 0));
  const std::filesystem::path file = std::filesystem::path(dir) / (tensor.name + ".npy");
  if (lse || dtype == DType::fp16 || dtype == DType::fp32 || dtype == DType::fp64) {
    const char* descr = lse || dtype == DType::fp32 ? "<f4" : dtype == DType::fp16 ? "<f2" : "<f8";
    write_npy(file, host_data, descr, shape);
    return;
  }
  const std::int64_t n = element_count<4>(tensor.shape);
  std::vector<float> widened(static_cast<std::size_t>(n));
  for (std::int64_t e = 0; e < n; ++e) widened[static_cast<std::size_t>(e)] = static_cast<float>(load(host_data, e, dtype));
  write_npy(file, widened.data(), "<f4", shape);
}

void write_reference_npy(const std::string& dir, const Problem& problem, Pass pass, const InputSpec& inputs) {
  std::filesystem::create_directories(dir);
  reference::AttentionData<double> data(problem);
  data.randomize(inputs);  // the generator's values rounded to the run's dtype: the variant's inputs exactly
  data.run_forward();
  auto write = [&](const std::string& name, const auto& tensor) {
    const auto& shape = tensor.shape();
    write_npy(std::filesystem::path(dir) / (name + ".npy"), tensor.values().data(), "<f8",
              std::vector<std::int64_t>(shape.begin(), shape.end()));
  };
  write("o_ref", data.o);
  write("lse_ref", data.lse);
  if (pass != Pass::fwd) {
    data.run_backward();
    write("dq_ref", data.dq);
    write("dk_ref", data.dk);
    write("dv_ref", data.dv);
  }
  for (const IoTensor& t : io_tensors(problem, DType::fp32)) {
    if (!is_length_tensor(t)) continue;
    const std::vector<std::int32_t> narrow = length_values(problem, t);
    write_npy(std::filesystem::path(dir) / (t.name + ".npy"), narrow.data(), "<i4",
              {static_cast<std::int64_t>(narrow.size())});
  }
}

}  // namespace flashlab::harness

namespace flashlab::harness {

HeadSlice head_slice(const Problem& p, const std::string& tensor, std::int64_t b, std::int64_t head) {
  const Sequence s = p.sequence(b);
  const AttentionShapes shapes = attention_shapes(p);
  if (tensor == "lse") {
    return {(s.slot * p.heads + head) * shapes.lse[2] + s.q_offset, s.seqlen_q, 1, 1};
  }
  const bool key_side = tensor == "dk" || tensor == "dv";
  const Shape<4>& shape = tensor == "dq" ? shapes.q : tensor == "dk" ? shapes.k : tensor == "dv" ? shapes.v : shapes.o;
  const std::int64_t token = key_side ? s.k_offset : s.q_offset;
  return {((s.slot * shape[1] + token) * shape[2] + head) * shape[3], key_side ? s.seqlen_k : s.seqlen_q, shape[3],
          shape[2] * shape[3]};
}

void check_row(std::int64_t row, const HeadSlice& slice, const std::string& tensor) {
  if (row < 0 || row >= slice.rows) {
    throw std::out_of_range(fmt::format("{}: row {} outside the head's {} rows", tensor, row, slice.rows));
  }
}

}  // namespace flashlab::harness
