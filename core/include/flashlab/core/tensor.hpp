// Tensor views that carry their shape and strides (in elements), and a small owning tensor.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "flashlab/core/errors.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab {

template <int Rank>
using Shape = std::array<std::int64_t, Rank>;

template <int Rank>
[[nodiscard]] constexpr Shape<Rank> contiguous_strides(const Shape<Rank>& shape) {
  Shape<Rank> stride{};
  std::int64_t s = 1;
  for (int i = Rank - 1; i >= 0; --i) {
    stride[i] = s;
    s *= shape[i];
  }
  return stride;
}

template <int Rank>
[[nodiscard]] constexpr std::int64_t element_count(const Shape<Rank>& shape) {
  std::int64_t n = 1;
  for (auto extent : shape) n *= extent;
  return n;
}

template <class T, int Rank>
class TensorView {
 public:
  using value_type = T;
  static constexpr int rank = Rank;

  TensorView() = default;
  TensorView(T* data, const Shape<Rank>& shape)
      : data_(data), shape_(shape), stride_(contiguous_strides<Rank>(shape)) {}
  TensorView(T* data, const Shape<Rank>& shape, const Shape<Rank>& stride)
      : data_(data), shape_(shape), stride_(stride) {}
  // A view of const T from a view of T.
  template <class U>
    requires std::is_same_v<const U, T> && (!std::is_same_v<U, T>)
  TensorView(const TensorView<U, Rank>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), shape_(other.shape()), stride_(other.strides()) {}

  [[nodiscard]] T* data() const { return data_; }
  [[nodiscard]] const Shape<Rank>& shape() const { return shape_; }
  [[nodiscard]] const Shape<Rank>& strides() const { return stride_; }
  [[nodiscard]] std::int64_t size(int dim) const { return shape_[dim]; }
  [[nodiscard]] std::int64_t stride(int dim) const { return stride_[dim]; }
  [[nodiscard]] std::int64_t numel() const { return element_count<Rank>(shape_); }
  [[nodiscard]] bool is_contiguous() const { return stride_ == contiguous_strides<Rank>(shape_); }

  template <class... I>
    requires(sizeof...(I) == Rank)
  [[nodiscard]] std::int64_t offset(I... index) const {
    const std::array<std::int64_t, Rank> idx{static_cast<std::int64_t>(index)...};
    std::int64_t off = 0;
    for (int i = 0; i < Rank; ++i) off += idx[i] * stride_[i];
    return off;
  }
  template <class... I>
    requires(sizeof...(I) == Rank)
  T& operator()(I... index) const {
    return data_[offset(index...)];
  }

 private:
  T* data_ = nullptr;
  Shape<Rank> shape_{};
  Shape<Rank> stride_{};
};

// Owning, contiguous, zero-initialised host tensor.
template <class T, int Rank>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(const Shape<Rank>& shape)
      : shape_(shape), data_(static_cast<std::size_t>(element_count<Rank>(shape))) {}
  [[nodiscard]] TensorView<T, Rank> view() { return {data_.data(), shape_}; }
  [[nodiscard]] TensorView<const T, Rank> view() const { return {data_.data(), shape_}; }
  [[nodiscard]] const Shape<Rank>& shape() const { return shape_; }
  [[nodiscard]] std::int64_t numel() const { return static_cast<std::int64_t>(data_.size()); }
  [[nodiscard]] std::vector<T>& values() { return data_; }
  [[nodiscard]] const std::vector<T>& values() const { return data_; }
  template <class... I>
  T& operator()(I... index) {
    return data_[static_cast<std::size_t>(view().offset(index...))];
  }
  template <class... I>
  const T& operator()(I... index) const {
    return data_[static_cast<std::size_t>(view().offset(index...))];
  }

 private:
  Shape<Rank> shape_{};
  std::vector<T> data_;
};

// The shapes a Problem implies (DESIGN.md §2): Q [B, N_q, H, d], K [B, N_k, H_kv, d], V [B, N_k, H_kv, d_v],
// O [B, N_q, H, d_v], LSE [B, H, N_q]; a varlen batch uses B = 1 and N = total tokens.
struct AttentionShapes {
  Shape<4> q, k, v, o;
  Shape<3> lse;
};
[[nodiscard]] AttentionShapes attention_shapes(const Problem& problem);

// Throws InvalidProblem when `view`'s shape is not `expected` (naming the tensor and both shapes).
template <class T, int Rank>
void check_shape(const char* tensor, const TensorView<T, Rank>& view, const std::type_identity_t<Shape<Rank>>& expected);

[[nodiscard]] std::string to_string(const std::int64_t* extents, int rank);

template <class T, int Rank>
void check_shape(const char* tensor, const TensorView<T, Rank>& view, const std::type_identity_t<Shape<Rank>>& expected) {
  if (view.shape() != expected) {
    throw InvalidProblem(tensor, std::string("tensor ") + tensor + " has shape " +
                                     to_string(view.shape().data(), Rank) + ", the problem needs " +
                                     to_string(expected.data(), Rank));
  }
}

}  // namespace flashlab
