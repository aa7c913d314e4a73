// Tile shapes of the flash2 kernels (internal header of kernels/flash2/): one traits struct per (head dim, element
// size), from which the thread count, the shared-memory layout and its size follow. No CUDA types appear here.
#pragma once

namespace flashlab::kernels::flash2 {

// The largest dynamic shared memory a block may use on sm_80 (A100: 163 KB); sm_90 allows 227 KB. Every tile
// configuration fits the smaller, so one set of traits serves both targets.
constexpr int kMaxSharedBytesSm80 = 163 * 1024;

// Forward tiles: kBlockM query rows per CTA in kWarps warps, each warp owning kMTiles m16 row blocks (16 or 32
// rows), K/V tiles of kBlockN keys. Shared memory holds Q, one K and one V tile: K of tile j+1 loads while P V of
// tile j runs, V of tile j while S = Q K^T of tile j runs (FlashAttention-2's pipeline), so the tiles stay small
// enough for two CTAs per SM. With two row blocks per warp every K and V fragment read from shared memory feeds
// two mma instead of one, which halves the shared-memory traffic per mma of S = Q K^T and of P V.
// The configurations compiled, and the default per head dim (chosen by measurement), are in flash2_fwd.cu.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_, int kElemBytes_>
struct ForwardTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kElemBytes = kElemBytes_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerWarp = kBlockM / kWarps;
  static constexpr int kMTiles = kRowsPerWarp / 16;

  // Shared-memory rows of kHeadDim elements padded by one 16-byte chunk: for every supported d a row is then an odd
  // number of 16-byte chunks long, so 8 consecutive rows start in 8 distinct 16-byte groups of the 32 banks and
  // the 8 row addresses of one ldmatrix phase (or 8 cp.async chunks of one column) never conflict, without an XOR
  // swizzle. The price is 16 bytes per row (3% of a tile at d = 256, 20% at d = 32).
  static constexpr int kChunkElems = 16 / kElemBytes;  // one cp.async / ldmatrix row: 16 bytes
  static constexpr int kRowElems = kHeadDim + kChunkElems;
  static constexpr int kRowBytes = kRowElems * kElemBytes;
  static constexpr int kChunksPerRow = kHeadDim / kChunkElems;

  static constexpr int kQTileBytes = kBlockM * kRowBytes;
  static constexpr int kKVTileBytes = kBlockN * kRowBytes;
  // layout: Q | K | V (the epilogue stages O through the Q tile)
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQTileBytes;
  static constexpr int kVOffset = kKOffset + kKVTileBytes;
  static constexpr int kSharedBytes = kVOffset + kKVTileBytes;

  // fragments per warp and row block: S is 16 x kBlockN, O is 16 x kHeadDim, in n8 tiles of 4 fp32 per thread
  static constexpr int kSTiles = kBlockN / 8;
  static constexpr int kOTiles = kHeadDim / 8;

  static_assert(kElemBytes == 2, "the m16n8k16 tensor-core path takes 16-bit inputs");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dims are multiples of 32 up to 256");
  static_assert(kBlockM % kWarps == 0 && kRowsPerWarp % 16 == 0 && kMTiles <= 2, "warps own 16 or 32 rows");
  static_assert(kBlockN % 16 == 0, "P V consumes S in k16 steps");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "every thread loads the same number of Q chunks");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "every thread loads the same number of K/V chunks");
  static_assert(kRowBytes % 16 == 0, "ldmatrix and cp.async need 16-byte aligned rows");
  static_assert((kRowBytes / 16) % 2 == 1, "padded rows must be an odd number of 16-byte chunks (bank conflicts)");
  static_assert(kSharedBytes <= kMaxSharedBytesSm80, "tiles must fit the shared memory of sm_80");
};

// Backward tiles. One CTA owns kBlockN keys (its dK_j, dV_j accumulate in registers) and walks the query blocks of
// kBlockM rows that can see them. Each warp owns 16 keys and, when kSplitD = 2, half of the head dim's columns of
// dK and dV (two warps then recompute the same 16 x kBlockM tiles of S and dP, which is what keeps dK and dV at
// d / 2 fp32 registers per thread each: at d = 256 one warp holding all 256 columns would need 256 registers for
// them alone). Per thread: dK + dV = d / kSplitD, S + dP = kBlockM / 2, the dQ A fragments kBlockN / 4.
//  - d = 64: kBlockM = 64 (S and dP 32 registers each; dK + dV = 64): 240 registers, no spills;
//  - d = 32: kBlockM = 32: with 64, ptxas (sm_80) spilled 12 bytes at 168 registers; 158 with 32, no spills;
//  - d = 96, 128: kBlockM = 32 (dK + dV = 96 or 128 registers leave room for S and dP of 16 each);
//  - d = 256: kBlockM = 16 and kSplitD = 2 (8 warps): with kBlockM = 32, sm_90a spilled 8 bytes at 255 registers.
// Not tuned by measurement yet (issue 4, item 4).
template <int kHeadDim_, int kElemBytes_>
struct BackwardTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kElemBytes = kElemBytes_;
  static constexpr int kBlockN = 64;  // keys per CTA
  static constexpr int kBlockM = kHeadDim == 64 ? 64 : (kHeadDim == 256 ? 16 : 32);
  static constexpr int kSplitD = kHeadDim == 256 ? 2 : 1;
  static constexpr int kKeyWarps = kBlockN / 16;
  static constexpr int kWarps = kKeyWarps * kSplitD;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kPartDim = kHeadDim / kSplitD;  // dK / dV columns per warp
  static constexpr int kStages = 2;                    // Q, dO, LSE, D of query block i+1 load while i is computed

  static constexpr int kChunkElems = 16 / kElemBytes;
  static constexpr int kRowElems = kHeadDim + kChunkElems;  // padded like the forward (odd number of 16-byte chunks)
  static constexpr int kRowBytes = kRowElems * kElemBytes;
  static constexpr int kChunksPerRow = kHeadDim / kChunkElems;
  // dS^T tile [key][query], rows padded by 16 bytes as well
  static constexpr int kDsRowBytes = (kBlockM + kChunkElems) * kElemBytes;

  // dQ = dS K: warps split the kBlockM x d tile into 16-row blocks and column groups
  static constexpr int kDqRowBlocks = kBlockM / 16;
  static constexpr int kDqColGroups = kWarps / kDqRowBlocks;
  static constexpr int kDqCols = kHeadDim / kDqColGroups;

  static constexpr int kQTileBytes = kBlockM * kRowBytes;
  static constexpr int kKVTileBytes = kBlockN * kRowBytes;
  // layout: K | V | Q stage 0, 1 | dO stage 0, 1 | dS^T | LSE stage 0, 1 | D stage 0, 1
  static constexpr int kKOffset = 0;
  static constexpr int kVOffset = kKVTileBytes;
  static constexpr int kQOffset = 2 * kKVTileBytes;
  static constexpr int kDoOffset = kQOffset + kStages * kQTileBytes;
  static constexpr int kDsOffset = kDoOffset + kStages * kQTileBytes;
  static constexpr int kLseOffset = kDsOffset + kBlockN * kDsRowBytes;
  static constexpr int kDOffset = kLseOffset + kStages * kBlockM * 4;
  static constexpr int kSharedBytes = kDOffset + kStages * kBlockM * 4;

  static constexpr int kSTiles = kBlockM / 8;  // S^T and dP^T per warp: 16 keys x kBlockM queries, n8 tiles
  static constexpr int kPartTiles = kPartDim / 8;

  static_assert(kElemBytes == 2, "the m16n8k16 tensor-core path takes 16-bit inputs");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dims are multiples of 32 up to 256");
  static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0, "mma k16 steps over queries and keys");
  static_assert(kPartDim % 16 == 0, "dK / dV column parts are whole k16 steps of ldmatrix.x4.trans");
  static_assert(kWarps % kDqRowBlocks == 0 && kDqCols % 16 == 0, "dQ work splits evenly over the warps");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "every thread loads the same number of Q / dO chunks");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "every thread loads the same number of K / V chunks");
  static_assert(kBlockM <= kThreads, "one thread per query row loads LSE and D");
  static_assert((kRowBytes / 16) % 2 == 1 && (kDsRowBytes / 16) % 2 == 1, "padded rows: odd 16-byte chunk counts");
  static_assert(kSharedBytes <= kMaxSharedBytesSm80, "tiles must fit the shared memory of sm_80");
};

}  // namespace flashlab::kernels::flash2
