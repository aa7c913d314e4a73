// The bytes model (DESIGN.md §2): HBM traffic that attention must or does move, next to the measured
// DRAM and L2-request bytes. `s` below is the element size of the run's dtype; LSE and D are float32.
#pragma once

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab {

// Compulsory traffic: each input read once, each output written once.
//   fwd: read Q, K, V; write O and LSE.
//   bwd: read Q, K, V, O, dO and LSE; write dQ, dK, dV.
//   fwdbwd: the sum.
[[nodiscard]] double minimum_bytes(const Problem& problem, DType dtype, Pass pass);

// Standard (materializing) attention, Theta(N d + N^2), as the `standard` variants run it: the compulsory
// traffic plus, per query head and sequence, N_q N_k elements of s bytes moved
//   fwd: 4 times (write S; read S and write P in the softmax; read P for P V),
//   bwd: 10 times (write S; read S, write P; read P for dV; write dP; read dP and P, write dS; read dS for dQ
//        and for dK) plus the rowsum D (write, read: 8 bytes per query row).
[[nodiscard]] double standard_bytes(const Problem& problem, DType dtype, Pass pass);

// FlashAttention (Dao et al. 2022, Theorem 2: Theta(N^2 d^2 / M)) with blocks of `block_rows` rows (B_r = B_c,
// set by the on-chip memory M), the kept fraction of pairs scaling the block visits:
//   fwd: read Q once and K, V once per query block; write O and LSE;
//   bwd (FlashAttention-2): D = rowsum(dO * O) (read O, dO, write D); per key block read Q, dO, LSE, D and
//        read + write the fp32 dQ accumulator; read K, V and write dK, dV once; convert dQ (read fp32, write).
[[nodiscard]] double flash_bytes(const Problem& problem, DType dtype, Pass pass, double block_rows);

}  // namespace flashlab
