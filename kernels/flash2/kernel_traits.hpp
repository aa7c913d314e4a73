// Tile shapes of the flash2 kernels (internal header of kernels/flash2/): one traits struct per (head dim, element
// size), from which the thread count, the shared-memory layout and its size follow. No CUDA types appear here.
#pragma once

namespace flashlab::kernels::flash2 {

// The largest dynamic shared memory a block may use on sm_80 (A100: 163 KB) and sm_90 (H100/H200: 227 KB). Every
// forward tile and the default backward tiles fit sm_80; the backward's double-buffered tiles need sm_90's. The
// launchers check the running GPU's limit (GPUs of compute capability 8.6/8.9 offer 99 KB).
constexpr int kMaxSharedBytesSm80 = 163 * 1024;
constexpr int kMaxSharedBytesSm90 = 227 * 1024;

// Tile rows of kHeadDim elements in shared memory (Q, K, V, dO; filled by cp.async, read by ldmatrix), laid out one
// of two ways, both free of bank conflicts for the 8 row addresses of an ldmatrix phase and for the 16-byte chunks a
// warp's cp.async writes:
//  - swizzled (d a multiple of 64): rows unpadded; 16-byte chunk c of row r is stored at chunk c ^ (r % 8) of the
//    row, so 8 consecutive rows read at one logical chunk hit 8 distinct 16-byte bank groups. A warp's cp.async
//    then fills whole 128-byte lines. (Rows padded instead made the same loads take 2.6x the shared-memory
//    wavefronts and 1.5x the L2-to-SM sectors: measured with ncu on an H200.)
//  - padded (d = 32, 96, where the XOR would leave the row): rows padded by one 16-byte chunk to an odd number of
//    chunks, so 8 consecutive rows start in 8 distinct bank groups.
// Swizzled rows cost registers: a lane's address for 16-column block j is its base XOR 32 (j % 4), so each base
// becomes four. The kernels therefore swizzle the tiles they stream (forward: K, V; backward: Q, dO), where the
// load traffic is, and pad the tiles loaded once per CTA (forward: Q; backward: K, V).
// Device code addresses a row's chunks through the helpers in flash2_common.cuh (chunk_offset, pair_address).
template <int kHeadDim_, int kElemBytes_, bool kSwizzleWanted>
struct TileRows {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kElemBytes = kElemBytes_;
  static constexpr int kChunkElems = 16 / kElemBytes;  // one cp.async / ldmatrix row: 16 bytes
  static constexpr int kChunksPerRow = kHeadDim / kChunkElems;
  static constexpr bool kSwizzle = kSwizzleWanted && kChunksPerRow % 8 == 0;
  static constexpr int kRowBytes = kHeadDim * kElemBytes + (kSwizzle ? 0 : 16);

  static_assert(kElemBytes == 2, "the m16n8k16 tensor-core path takes 16-bit inputs");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dims are multiples of 32 up to 256");
  static_assert(kSwizzle ? kRowBytes % 128 == 0 : (kRowBytes / 16) % 2 == 1,
                "swizzled rows are whole 128-byte lines; padded rows an odd number of 16-byte chunks");
};

// Forward tiles: kBlockM query rows per CTA in kWarps warps, each warp owning kMTiles m16 row blocks (16 or 32
// rows), K/V tiles of kBlockN keys. Shared memory holds Q, one K and one V tile: K of tile j+1 loads while P V of
// tile j runs, V of tile j while S = Q K^T of tile j runs (FlashAttention-2's pipeline), so the tiles stay small
// enough for two CTAs per SM. With two row blocks per warp every K and V fragment read from shared memory feeds
// two mma instead of one, which halves the shared-memory traffic per mma of S = Q K^T and of P V.
// The configurations compiled, and the default per head dim (chosen by measurement), are in flash2_fwd.cu.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_, int kElemBytes_>
struct ForwardTraits : TileRows<kHeadDim_, kElemBytes_, false> {
  using QRows = TileRows<kHeadDim_, kElemBytes_, false>;  // Q (and the staged O): padded
  using KVRows = TileRows<kHeadDim_, kElemBytes_, true>;  // K, V: swizzled where d allows
  using QRows::kChunksPerRow;
  using QRows::kHeadDim;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerWarp = kBlockM / kWarps;
  static constexpr int kMTiles = kRowsPerWarp / 16;

  static constexpr int kQTileBytes = kBlockM * QRows::kRowBytes;
  static constexpr int kKVTileBytes = kBlockN * KVRows::kRowBytes;
  // layout: Q | K | V (the epilogue stages O through the Q tile); every tile starts 128-byte aligned
  static_assert(kQTileBytes % 128 == 0 && kKVTileBytes % 128 == 0, "tiles start 128-byte aligned (pair_address)");
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQTileBytes;
  static constexpr int kVOffset = kKOffset + kKVTileBytes;
  static constexpr int kSharedBytes = kVOffset + kKVTileBytes;

  // fragments per warp and row block: S is 16 x kBlockN, O is 16 x kHeadDim, in n8 tiles of 4 fp32 per thread
  static constexpr int kSTiles = kBlockN / 8;
  static constexpr int kOTiles = kHeadDim / 8;

  static_assert(kBlockM % kWarps == 0 && kRowsPerWarp % 16 == 0 && kMTiles <= 2, "warps own 16 or 32 rows");
  static_assert(kBlockN % 16 == 0, "P V consumes S in k16 steps");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "every thread loads the same number of Q chunks");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "every thread loads the same number of K/V chunks");
  static_assert(kSharedBytes <= kMaxSharedBytesSm80, "tiles must fit the shared memory of sm_80");
};

// Backward tiles (FlashAttention-2's layout). One CTA of 8 warps owns kBlockN keys (K_j, V_j in shared memory,
// dK_j, dV_j in registers) and walks the query blocks of kBlockM rows that see them. Per query block three warp
// tilings follow one another, each warp taking one tile of a 2-D grid of warps:
//   S = Q K^T and dP = dO V^T   (kBlockM x kBlockN)  warps kWarpsMSdp along queries x the rest along keys;
//                               P and dS go to shared memory in the dtype
//   dV += P^T dO, dK += dS^T Q  (kBlockN x d)        warps kWarpsNdKV along keys x the rest along d;
//   dQ += dS K                  (kBlockM x d)        warps kWarpsMdQ along queries x the rest along d, added in fp32
//                                                    to the global accumulator
// Warp tiles of 32 rows (two m16 blocks) let each B fragment read from shared memory feed two mma. Q (and dO where
// shared memory allows) are double-buffered: block i+1 loads while block i is computed; a single buffer is
// refilled once its last reader (dK += dS^T Q, dV += P^T dO) is done, during dQ. The configurations and the
// reasons for them are in flash2_bwd.cu.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarpsMSdp_, int kWarpsNdKV_, int kWarpsMdQ_, int kStagesQ_,
          int kStagesDo_, int kElemBytes_>
struct BackwardTraits : TileRows<kHeadDim_, kElemBytes_, false> {
  using QRows = TileRows<kHeadDim_, kElemBytes_, true>;    // Q, dO: swizzled where d allows
  using KVRows = TileRows<kHeadDim_, kElemBytes_, false>;  // K, V: padded
  using KVRows::kChunkElems;
  using KVRows::kChunksPerRow;
  using KVRows::kElemBytes;
  using KVRows::kHeadDim;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = 8;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStagesQ = kStagesQ_;
  static constexpr int kStagesDo = kStagesDo_;

  // S, dP: warp tile kSdpRows (queries) x kSdpCols (keys)
  static constexpr int kWarpsMSdp = kWarpsMSdp_;
  static constexpr int kSdpRows = kBlockM / kWarpsMSdp;
  static constexpr int kSdpCols = kBlockN / (kWarps / kWarpsMSdp);
  static constexpr int kSdpMTiles = kSdpRows / 16;
  static constexpr int kSdpNTiles = kSdpCols / 8;
  // dK, dV: warp tile kDkvRows (keys) x kDkvCols (head dim)
  static constexpr int kWarpsNdKV = kWarpsNdKV_;
  static constexpr int kDkvRows = kBlockN / kWarpsNdKV;
  static constexpr int kDkvCols = kHeadDim / (kWarps / kWarpsNdKV);
  static constexpr int kDkvMTiles = kDkvRows / 16;
  static constexpr int kDkvNTiles = kDkvCols / 8;
  // dQ: warp tile kDqRows (queries) x kDqCols (head dim)
  static constexpr int kWarpsMdQ = kWarpsMdQ_;
  static constexpr int kDqRows = kBlockM / kWarpsMdQ;
  static constexpr int kDqCols = kHeadDim / (kWarps / kWarpsMdQ);
  static constexpr int kDqMTiles = kDqRows / 16;
  static constexpr int kDqNTiles = kDqCols / 8;
  // ... computed in column passes of kDqPassTiles n8 tiles: two where one pass would hold 64 fp32 per thread (d = 256,
  // beside 128 of dK and dV), so the phase keeps the register budget of the others
  static constexpr int kDqPasses = kDqMTiles * kDqNTiles * 4 >= 64 ? 2 : 1;
  static constexpr int kDqPassTiles = kDqNTiles / kDqPasses;

  // P and dS ([query][key], written by the threads' stores, not cp.async) keep rows padded by one 16-byte chunk
  static constexpr int kPRowBytes = (kBlockN + kChunkElems) * kElemBytes;

  static constexpr int kQTileBytes = kBlockM * QRows::kRowBytes;
  static constexpr int kKVTileBytes = kBlockN * KVRows::kRowBytes;
  static constexpr int kPTileBytes = kBlockM * kPRowBytes;
  static_assert(kQTileBytes % 128 == 0 && kKVTileBytes % 128 == 0 && kPTileBytes % 128 == 0,
                "tiles start 128-byte aligned (pair_address)");
  // layout: K | V | Q stages | dO stages | P | dS | LSE stage 0, 1 | D stage 0, 1 | loop scalars
  static constexpr int kKOffset = 0;
  static constexpr int kVOffset = kKVTileBytes;
  static constexpr int kQOffset = 2 * kKVTileBytes;
  static constexpr int kDoOffset = kQOffset + kStagesQ * kQTileBytes;
  static constexpr int kPOffset = kDoOffset + kStagesDo * kQTileBytes;
  static constexpr int kDsOffset = kPOffset + kPTileBytes;
  static constexpr int kLseOffset = kDsOffset + kPTileBytes;
  static constexpr int kDOffset = kLseOffset + 2 * kBlockM * 4;
  // The main loop's pointers (LoopScalars in flash2_bwd.cu) in registers, or read from shared memory at each use:
  // measured on an H200 (bf16, N = 2048-16384, both in one session), registers are 1% faster at d = 128 and 3% at
  // d = 256, shared memory 3-5% at d = 64 (both without spills).
  static constexpr bool kLoopPointersInRegisters = kHeadDim >= 128;
  static constexpr int kScalarsOffset = kDOffset + 2 * kBlockM * 4;  // LoopScalars (flash2_bwd.cu)
  static constexpr int kSharedBytes = kScalarsOffset + 64;

  static_assert(kSdpRows % 16 == 0 && kSdpCols % 16 == 0, "S / dP warp tiles: m16 rows, n16 column pairs");
  static_assert(kDkvRows % 16 == 0 && kDkvCols % 16 == 0, "dK / dV warp tiles: m16 rows, n16 column pairs");
  static_assert(kDqRows % 16 == 0 && kDqCols % 16 == 0 && kDqPassTiles % 2 == 0,
                "dQ warp tiles and passes: m16 rows, n16 column pairs");
  static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0, "k16 steps over queries and keys");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "every thread loads the same number of Q / dO chunks");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "every thread loads the same number of K / V chunks");
  static_assert(kBlockM <= kThreads, "one thread per query row loads LSE and D");
  static_assert((kPRowBytes / 16) % 2 == 1, "padded P / dS rows: odd 16-byte chunk counts");
  static_assert(kStagesQ >= 1 && kStagesQ <= 2 && kStagesDo >= 1 && kStagesDo <= 2, "one or two buffers");
  static_assert(kSharedBytes <= kMaxSharedBytesSm90, "tiles must fit the shared memory of sm_90");
};

}  // namespace flashlab::kernels::flash2
