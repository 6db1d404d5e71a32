// Direct 2-D convolutions for the CPU, called from XLA through its FFI.
//
// XLA:CPU computes the 3x3 convolutions of a ResNet with Eigen's spatial convolution, and
// their weight gradients as convolutions over transposed copies of the activations. At the
// channel counts of the CIFAR ResNets (16-64) that runs at a fifth to a half of what the
// cores can do. These kernels hold a tile of outputs in vector registers and stream the
// inputs past it, the way oneDNN's direct convolutions do:
//
//   resnet_conv2d_forward      y[n,h,w,o] = sum_{i,j,c} x[n,sh+i-P,sw+j-P,c] * k[i,j,c,o]
//   resnet_conv2d_weight_grad  dk[i,j,c,o] = sum_{n,h,w} x[n,sh+i-P,sw+j-P,c] * dy[n,h,w,o]
//
// for odd square kernels KxK with torchvision's padding P = K/2, stride s, NHWC
// activations, HWIO kernels, float32, any number of input channels and a multiple of 16
// output channels. (At stride 1 the input gradient is the forward convolution of dy with
// the kernel turned by 180 degrees and its channels swapped; the caller does that.) Work
// is split over XLA's intra-op thread pool. Written with GCC/Clang vector extensions and
// compiled for the host CPU (-march=native): 16 floats are one AVX-512 register, two AVX2.
// The tiles are chosen per instruction set: AVX-512's 32 registers of 16 floats, or 16 of 8.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <vector>

#include "conv2d_amx.h"
#include "parallel.h"
#include "slabs.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

using namespace resnet_jax;  // NOLINT: vfloat, kLanes, LoadVector, StoreVector, ParallelFor, ffi

// One output row of width W (its K input rows start at `slab`), columns in blocks of WB,
// output channels [o0, o0 + 16 * NO): the WB x NO accumulators stay in registers over all
// K*K*C products.
template <int WB, int NO, int STEP>
void ForwardRowWithStep(const float* slab, int64_t slab_cols, int64_t K, int64_t stride,
                        int64_t C, int64_t O, const float* kernel, int64_t W, float* out,
                        int64_t o0) {
  constexpr int NV = NO * 16 / kLanes;  // the target's vectors per column of the tile
  const int64_t step = STEP > 0 ? STEP : stride * C;
  for (int64_t w0 = 0; w0 < W; w0 += WB) {
    vfloat acc[WB][NV] = {};
    for (int64_t i = 0; i < K; ++i) {
      for (int64_t j = 0; j < K; ++j) {
        const float* xs = slab + (i * slab_cols + w0 * stride + j) * C;
        const float* ks = kernel + (i * K + j) * C * O + o0;
        for (int64_t c = 0; c < C; ++c) {
          vfloat k[NV];
          for (int q = 0; q < NV; ++q) k[q] = LoadVector(ks + c * O + kLanes * q);
          for (int p = 0; p < WB; ++p) {
            const float xv = xs[p * step + c];
            for (int q = 0; q < NV; ++q) acc[p][q] += xv * k[q];
          }
        }
      }
    }
    const int64_t valid = std::min<int64_t>(WB, W - w0);
    for (int64_t p = 0; p < valid; ++p) {
      for (int q = 0; q < NV; ++q) StoreVector(out + (w0 + p) * O + o0 + kLanes * q, acc[p][q]);
    }
  }
}

// The step from one output column's inputs to the next's, stride * C, as a constant where
// it is small: the WB inputs of a column block are then one base address and constant
// offsets, instead of WB address registers (x86 has 16).
template <int WB, int NO>
void ForwardRow(const float* slab, int64_t slab_cols, int64_t K, int64_t stride, int64_t C,
                int64_t O, const float* kernel, int64_t W, float* out, int64_t o0) {
  switch (stride * C) {
    case 16:
      return ForwardRowWithStep<WB, NO, 16>(slab, slab_cols, K, stride, C, O, kernel, W, out, o0);
    case 32:
      return ForwardRowWithStep<WB, NO, 32>(slab, slab_cols, K, stride, C, O, kernel, W, out, o0);
    case 64:
      return ForwardRowWithStep<WB, NO, 64>(slab, slab_cols, K, stride, C, O, kernel, W, out, o0);
    default:
      return ForwardRowWithStep<WB, NO, -1>(slab, slab_cols, K, stride, C, O, kernel, W, out,
                                            o0);
  }
}

#if defined(__AVX512BF16__)
// The bfloat16 row: the same tile of WB x NO float32 accumulators, fed by vdpbf16ps, which
// adds to each of 16 lanes the products of a pair of bfloat16 inputs and a pair of
// weights. A pair of input channels of one pixel is one 32-bit broadcast; the kernel comes
// in channel pairs, [K, K, C/2, O, 2] (ForwardBf16 repacks it), so that one 32-weight vector holds
// both channels' weights of 16 outputs. The sums are rounded to bfloat16 once, at the end.
using AliasedPair = int32_t __attribute__((aligned(2), may_alias));

template <int WB, int NO>
void ForwardRowBf16(const uint16_t* slab, int64_t slab_cols, int64_t K, int64_t stride,
                    int64_t C, int64_t O, const uint16_t* kernel, int64_t W, uint16_t* out,
                    int64_t o0) {
  const int64_t step = stride * C;
  for (int64_t w0 = 0; w0 < W; w0 += WB) {
    __m512 acc[WB][NO];
    for (int p = 0; p < WB; ++p) {
      for (int q = 0; q < NO; ++q) acc[p][q] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < K; ++i) {
      for (int64_t j = 0; j < K; ++j) {
        const uint16_t* xs = slab + (i * slab_cols + w0 * stride + j) * C;
        const uint16_t* ks = kernel + (i * K + j) * C * O + 2 * o0;
        for (int64_t c = 0; c < C; c += 2) {
          __m512bh k[NO];
          for (int q = 0; q < NO; ++q) {
            k[q] = (__m512bh)_mm512_loadu_si512(ks + c * O + 32 * q);
          }
          for (int p = 0; p < WB; ++p) {
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(
                *reinterpret_cast<const AliasedPair*>(xs + p * step + c));
            for (int q = 0; q < NO; ++q) acc[p][q] = _mm512_dpbf16_ps(acc[p][q], k[q], xv);
          }
        }
      }
    }
    const int64_t valid = std::min<int64_t>(WB, W - w0);
    for (int64_t p = 0; p < valid; ++p) {
      for (int q = 0; q < NO; ++q) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (w0 + p) * O + o0 + 16 * q),
                            (__m256i)_mm512_cvtneps_pbh(acc[p][q]));
      }
    }
  }
}
#endif

template <typename T>
using ForwardRowFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, const T*,
                              int64_t, T*, int64_t);

template <typename T>
struct ForwardTile {
  int wb, no;
  ForwardRowFn<T> fn;
};

#if defined(__AVX512F__)
// At most 28 accumulators: with the NO kernel vectors they fit AVX-512's 32 registers (the
// input is broadcast from memory inside the multiply-add).
constexpr ForwardTile<float> kForwardTiles[] = {
    {16, 1, ForwardRow<16, 1>}, {14, 1, ForwardRow<14, 1>}, {8, 1, ForwardRow<8, 1>},
    {7, 1, ForwardRow<7, 1>},   {14, 2, ForwardRow<14, 2>}, {12, 2, ForwardRow<12, 2>},
    {8, 2, ForwardRow<8, 2>},   {7, 2, ForwardRow<7, 2>},   {7, 4, ForwardRow<7, 4>},
    {6, 4, ForwardRow<6, 4>},   {4, 4, ForwardRow<4, 4>},
};
#else
// 16 registers of 8 floats (AVX2; NEON's 32 of 4 hold as many floats): a 16-float vector
// takes two, and the broadcast input one more. 2 * (WB * NO + NO) + 1 <= 16.
constexpr ForwardTile<float> kForwardTiles[] = {
    {6, 1, ForwardRow<6, 1>}, {5, 1, ForwardRow<5, 1>}, {4, 1, ForwardRow<4, 1>},
    {2, 2, ForwardRow<2, 2>},
};
#endif

#if defined(__AVX512BF16__)
// The float32 AVX-512 tiles' shapes: as many accumulators, as many kernel vectors.
constexpr ForwardTile<uint16_t> kForwardTilesBf16[] = {
    {16, 1, ForwardRowBf16<16, 1>}, {14, 1, ForwardRowBf16<14, 1>},
    {8, 1, ForwardRowBf16<8, 1>},   {7, 1, ForwardRowBf16<7, 1>},
    {14, 2, ForwardRowBf16<14, 2>}, {12, 2, ForwardRowBf16<12, 2>},
    {8, 2, ForwardRowBf16<8, 2>},   {7, 2, ForwardRowBf16<7, 2>},
    {7, 4, ForwardRowBf16<7, 4>},   {6, 4, ForwardRowBf16<6, 4>},
    {4, 4, ForwardRowBf16<4, 4>},
};
#endif

// The tile that wastes the fewest columns of a row of width W, then the largest.
template <typename T, size_t N>
ForwardTile<T> ChooseForwardTile(const ForwardTile<T> (&tiles)[N], int64_t W, int64_t O) {
  ForwardTile<T> best = tiles[0];
  double best_score = -1;
  for (const ForwardTile<T>& t : tiles) {
    if (O % (16 * t.no) != 0) continue;
    const int64_t blocks = (W + t.wb - 1) / t.wb;
    const double score = double(W) / double(blocks * t.wb) + 1e-3 * t.wb * t.no;
    if (score > best_score) best = t, best_score = score;
  }
  return best;
}

// x: [N, H, W, C], k: [K, K, C, O], y: [N, Ho, Wo, O].
ffi::Error CheckShapes(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                       ffi::Span<const int64_t> y, int64_t stride) {
  if (x.size() != 4 || k.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("conv2d: expected NHWC, HWIO and NHWC arrays");
  }
  if (stride < 1 || k[0] != k[1] || k[0] % 2 == 0 || k[2] != x[3] || k[3] != y[3] ||
      y[0] != x[0] || y[1] != OutputSize(x[1], k[0], stride) ||
      y[2] != OutputSize(x[2], k[0], stride) || k[3] % 16 != 0) {
    return ffi::Error::InvalidArgument(
        "conv2d: needs an odd square kernel with padding K/2, matching channels and "
        "shapes, and a multiple of 16 output channels");
  }
  return ffi::Error::Success();
}

// The forward convolution of x [N, H, W, C] with the kernel (laid out as `tile.fn` reads
// it) into y [N, Ho, Wo, O].
template <typename T>
void ForwardWithTile(ffi::ThreadPool& pool, const T* xs, ffi::Span<const int64_t> xd,
                     const T* ks, int64_t K, T* ys, ffi::Span<const int64_t> yd,
                     int64_t stride, ForwardTile<T> tile) {
  const int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], Ho = yd[1], Wo = yd[2];
  const int64_t O = yd[3], pad = K / 2;
  // Room for the last column block's overrun, which reads zeros.
  const int64_t blocks = (Wo + tile.wb - 1) / tile.wb;
  const int64_t slab_cols = std::max(pad + W, blocks * tile.wb * stride + K);
  // Tasks are bands of output rows, enough of them to keep every worker busy.
  const int64_t workers = NumWorkers(pool, N * Ho);
  const int64_t bands = std::min<int64_t>(Ho, (4 * workers + N - 1) / N);
  const int64_t band_rows = (Ho + bands - 1) / bands;
  ParallelFor(pool, N * bands, workers, [&](int64_t task) {
    const int64_t n = task / bands, h0 = (task % bands) * band_rows;
    const int64_t h1 = std::min(Ho, h0 + band_rows);
    if (h0 >= h1) return;
    const int64_t r0 = h0 * stride - pad, r1 = (h1 - 1) * stride - pad + K;
    T* slab = PaddedSlab<T>((band_rows - 1) * stride + K, slab_cols, C);
    FillSlab(xs + n * H * W * C, H, W, C, r0, r1, pad, slab_cols, slab);
    for (int64_t h = h0; h < h1; ++h) {
      T* out = ys + ((n * Ho + h) * Wo) * O;
      const T* rows = slab + (h - h0) * stride * slab_cols * C;
      for (int64_t o0 = 0; o0 < O; o0 += 16 * tile.no) {
        tile.fn(rows, slab_cols, K, stride, C, O, ks, Wo, out, o0);
      }
    }
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  if (ffi::Error e = CheckShapes(x.dimensions(), kernel.dimensions(), y->dimensions(), stride);
      e.failure()) {
    return e;
  }
  ForwardWithTile(pool, x.typed_data(), x.dimensions(), kernel.typed_data(),
                  kernel.dimensions()[0], y->typed_data(), y->dimensions(), stride,
                  ChooseForwardTile(kForwardTiles, y->dimensions()[2], y->dimensions()[3]));
  return ffi::Error::Success();
}

// The bfloat16 forward convolution: sums in float32, rounded once. Needs AVX512-BF16;
// without it the library has no such tiles, and says so (resnet_kernels_bf16).
ffi::Error ForwardBf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x,
                       ffi::Buffer<ffi::BF16> kernel, ffi::ResultBuffer<ffi::BF16> y,
                       int64_t stride) {
  if (ffi::Error e = CheckShapes(x.dimensions(), kernel.dimensions(), y->dimensions(), stride);
      e.failure()) {
    return e;
  }
#if defined(__AVX512BF16__)
  const auto kd = kernel.dimensions();
  const int64_t K = kd[0], C = kd[2], O = kd[3];
  if (C % 2 != 0) {
    return ffi::Error::InvalidArgument("conv2d bfloat16: needs an even number of channels");
  }
  // [K, K, C, O] -> [K, K, C/2, O, 2]: the two channels of a pair side by side per output.
  // (Uninitialised: every value is written. ResNet-50's deepest kernel is 4.7 MB, repacked
  // at every call on the calling thread.)
  const std::unique_ptr<uint16_t[]> paired(new uint16_t[K * K * C * O]);
  const uint16_t* ks = kernel.typed_data();
  for (int64_t row = 0; row < K * K * C; row += 2) {
    InterleavePairs(ks + row * O, ks + (row + 1) * O, O, paired.get() + row * O);
  }
  if (!ForwardAmx(pool, x.typed_data(), x.dimensions(), paired.get(), K, y->typed_data(),
                  y->dimensions(), stride)) {
    ForwardWithTile(pool, x.typed_data(), x.dimensions(), paired.get(), K, y->typed_data(),
                    y->dimensions(), stride,
                    ChooseForwardTile(kForwardTilesBf16, y->dimensions()[2], O));
  }
  return ffi::Error::Success();
#else
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "conv2d bfloat16: the kernels were built without AVX512-BF16");
#endif
}

// Adds to the kernel-gradient tile dk[i, j, c0:c0+CB, o0:o0+16*NO] the products of one
// image (dy: [H, W, O] at the output's size): the accumulators stay in registers over all
// its pixels.
template <int CB, int NO, typename G>
void WeightGradTile(const float* slab, int64_t slab_cols, int64_t stride, int64_t H, int64_t W,
                    int64_t C, const G* dy, int64_t O, int64_t i, int64_t j, int64_t c0,
                    int64_t o0, float* dk_tap) {
  constexpr int NV = NO * 16 / kLanes;  // the target's vectors per input channel
  vfloat acc[CB][NV];
  for (int c = 0; c < CB; ++c) {
    for (int q = 0; q < NV; ++q) {
      acc[c][q] = LoadVector(dk_tap + (c0 + c) * O + o0 + kLanes * q);
    }
  }
  const int64_t step = stride * C;
  for (int64_t h = 0; h < H; ++h) {
    const float* xs = slab + ((h * stride + i) * slab_cols + j) * C + c0;
    const G* gs = dy + h * W * O + o0;
    for (int64_t w = 0; w < W; ++w) {
      vfloat g[NV];
      for (int q = 0; q < NV; ++q) g[q] = LoadVector(gs + w * O + kLanes * q);
      for (int c = 0; c < CB; ++c) {
        const float xv = xs[w * step + c];
        for (int q = 0; q < NV; ++q) acc[c][q] += xv * g[q];
      }
    }
  }
  for (int c = 0; c < CB; ++c) {
    for (int q = 0; q < NV; ++q) StoreVector(dk_tap + (c0 + c) * O + o0 + kLanes * q, acc[c][q]);
  }
}

// G: float, or bfloat16 bits (widened as they are loaded; the slab is float32 either way).
template <typename G>
using WeightGradTileFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  const G*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  float*);

template <typename G>
struct WeightGradTiling {
  int cb, no;
  WeightGradTileFn<G> fn;
};

#if defined(__AVX512F__)
// In order of preference: 16 input channels (one cache line of x per pixel) by one vector
// of outputs; for fewer input channels, more output vectors, so that each pixel still
// feeds 8-16 accumulators.
template <typename G>
constexpr WeightGradTiling<G> kWeightGradTilings[] = {
    {16, 1, WeightGradTile<16, 1, G>}, {8, 2, WeightGradTile<8, 2, G>},
    {4, 4, WeightGradTile<4, 4, G>},   {3, 4, WeightGradTile<3, 4, G>},
    {2, 4, WeightGradTile<2, 4, G>},   {8, 1, WeightGradTile<8, 1, G>},
    {4, 2, WeightGradTile<4, 2, G>},   {3, 2, WeightGradTile<3, 2, G>},
    {4, 1, WeightGradTile<4, 1, G>},   {3, 1, WeightGradTile<3, 1, G>},
    {2, 1, WeightGradTile<2, 1, G>},   {1, 4, WeightGradTile<1, 4, G>},
    {1, 1, WeightGradTile<1, 1, G>},
};
#else
// 16 registers of 8 floats: CB * NO accumulators and NO gradient vectors of two registers
// each, and the broadcast input: 2 * (CB * NO + NO) + 1 <= 16.
template <typename G>
constexpr WeightGradTiling<G> kWeightGradTilings[] = {
    {6, 1, WeightGradTile<6, 1, G>}, {4, 1, WeightGradTile<4, 1, G>},
    {2, 2, WeightGradTile<2, 2, G>}, {3, 1, WeightGradTile<3, 1, G>},
    {2, 1, WeightGradTile<2, 1, G>}, {1, 2, WeightGradTile<1, 2, G>},
    {1, 1, WeightGradTile<1, 1, G>},
};
#endif

template <typename G>
WeightGradTiling<G> ChooseWeightGradTiling(int64_t C, int64_t O) {
  for (const WeightGradTiling<G>& t : kWeightGradTilings<G>) {
    if (C % t.cb == 0 && O % (16 * t.no) == 0) return t;
  }
  return kWeightGradTilings<G>[std::size(kWeightGradTilings<G>) - 1];
}

// dk [K, K, C, O] (float32) from x and dy, both float32 or both bfloat16 bits (widened to
// float32 as they are read): float32 multiply-adds.
template <typename G>
void WeightGradOf(ffi::ThreadPool& pool, const G* xs, const G* gs, const WeightGradShape& d,
                  float* out) {
  const WeightGradTiling<G> tiling = ChooseWeightGradTiling<G>(d.C, d.O);
  const int64_t slab_size = d.slab_rows * d.slab_cols * d.C;
  const int64_t image_bytes = slab_size * 4 + d.Ho * d.Wo * d.O * int64_t{sizeof(G)};
  SumOverImageGroups(pool, d.N, d.taps(), image_bytes, out,
                     [&](int64_t n0, int64_t images, float* dk) {
    float* slabs = PaddedSlab<float>(images * d.slab_rows, d.slab_cols, d.C);
    for (int64_t m = 0; m < images; ++m) {
      FillSlab(xs + (n0 + m) * d.H * d.W * d.C, d.H, d.W, d.C, -d.pad, d.slab_rows - d.pad,
               d.pad, d.slab_cols, slabs + m * slab_size);
    }
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.K; ++j) {
        float* tap = dk + (i * d.K + j) * d.C * d.O;
        for (int64_t c0 = 0; c0 < d.C; c0 += tiling.cb) {
          for (int64_t o0 = 0; o0 < d.O; o0 += 16 * tiling.no) {
            for (int64_t m = 0; m < images; ++m) {
              tiling.fn(slabs + m * slab_size, d.slab_cols, d.stride, d.Ho, d.Wo, d.C,
                        gs + (n0 + m) * d.Ho * d.Wo * d.O, d.O, i, j, c0, o0, tap);
            }
          }
        }
      }
    }
  });
}

#if defined(__AVX512BF16__)
// Adds to the tile dk[i, j, c0:c0+CB, o0:o0+16*NO] the products of `pairs` pairs of images:
// `xs` holds each pair's padded inputs, the two images' values side by side,
// [slab rows][slab cols][C][2], `x_step` apart, and `gs` their output gradients likewise,
// [Ho][Wo][O][2], `g_step` apart; each vdpbf16ps adds both images' products of a pixel.
// The tile stays in registers over all of them (small feature maps have few pixels).
template <int CB, int NO>
void WeightGradTileBf16(const uint16_t* xs, int64_t x_step, const uint16_t* gs, int64_t g_step,
                        int64_t pairs, int64_t slab_cols, int64_t stride, int64_t Ho,
                        int64_t Wo, int64_t C, int64_t O, int64_t i, int64_t j, int64_t c0,
                        int64_t o0, float* dk_tap) {
  __m512 acc[CB][NO];
  for (int c = 0; c < CB; ++c) {
    for (int q = 0; q < NO; ++q) acc[c][q] = _mm512_loadu_ps(dk_tap + (c0 + c) * O + o0 + 16 * q);
  }
  const int64_t x_col_step = stride * C * 2;
  for (int64_t m = 0; m < pairs; ++m) {
    for (int64_t h = 0; h < Ho; ++h) {
      const uint16_t* x_row =
          xs + m * x_step + ((h * stride + i) * slab_cols + j) * C * 2 + 2 * c0;
      const uint16_t* g_row = gs + m * g_step + h * Wo * O * 2 + 2 * o0;
      for (int64_t w = 0; w < Wo; ++w) {
        __m512bh g[NO];
        for (int q = 0; q < NO; ++q) {
          g[q] = (__m512bh)_mm512_loadu_si512(g_row + w * O * 2 + 32 * q);
        }
        for (int c = 0; c < CB; ++c) {
          const __m512bh xv = (__m512bh)_mm512_set1_epi32(
              *reinterpret_cast<const AliasedPair*>(x_row + w * x_col_step + 2 * c));
          for (int q = 0; q < NO; ++q) acc[c][q] = _mm512_dpbf16_ps(acc[c][q], g[q], xv);
        }
      }
    }
  }
  for (int c = 0; c < CB; ++c) {
    for (int q = 0; q < NO; ++q) _mm512_storeu_ps(dk_tap + (c0 + c) * O + o0 + 16 * q, acc[c][q]);
  }
}

using WeightGradTileBf16Fn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, float*);

struct WeightGradTilingBf16 {
  int cb, no;
  WeightGradTileBf16Fn fn;
};

// The float32 AVX-512 tilings' shapes.
constexpr WeightGradTilingBf16 kWeightGradTilingsBf16[] = {
    {16, 1, WeightGradTileBf16<16, 1>}, {8, 2, WeightGradTileBf16<8, 2>},
    {4, 4, WeightGradTileBf16<4, 4>},   {2, 4, WeightGradTileBf16<2, 4>},
    {8, 1, WeightGradTileBf16<8, 1>},   {4, 2, WeightGradTileBf16<4, 2>},
    {4, 1, WeightGradTileBf16<4, 1>},   {2, 1, WeightGradTileBf16<2, 1>},
    {1, 4, WeightGradTileBf16<1, 4>},   {1, 1, WeightGradTileBf16<1, 1>},
};

// dk from bfloat16 x and dy on vdpbf16ps: pairs of images are the pairs its products are
// summed over (an odd last image is paired with zeros). Each pair's padded inputs and
// output gradients are copied once, side by side; every tap reads them in place.
void WeightGradPairedBf16(ffi::ThreadPool& pool, const uint16_t* xs, const uint16_t* gs,
                          const WeightGradShape& d, float* out) {
  WeightGradTilingBf16 tiling = kWeightGradTilingsBf16[std::size(kWeightGradTilingsBf16) - 1];
  for (const WeightGradTilingBf16& t : kWeightGradTilingsBf16) {
    if (d.C % t.cb == 0 && d.O % (16 * t.no) == 0) {
      tiling = t;
      break;
    }
  }
  const int64_t image_x = d.H * d.W * d.C, image_g = d.Ho * d.Wo * d.O;
  const int64_t x_pair_size = d.slab_rows * d.slab_cols * d.C * 2;
  const int64_t g_pair_size = image_g * 2;
  const int64_t pair_bytes = 2 * (x_pair_size + g_pair_size);
  SumOverImageGroups(pool, (d.N + 1) / 2, d.taps(), pair_bytes, out,
                     [&](int64_t p0, int64_t pairs, float* dk) {
    uint16_t* x_pairs = PaddedSlab<uint16_t, 1>(pairs * d.slab_rows, d.slab_cols, 2 * d.C);
    thread_local std::vector<uint16_t> g_pairs;
    g_pairs.resize(pairs * g_pair_size);
    for (int64_t m = 0; m < pairs; ++m) {
      const int64_t n = 2 * (p0 + m);
      const bool both = n + 1 < d.N;
      FillPairedSlab(xs + n * image_x, both ? xs + (n + 1) * image_x : nullptr, d.H, d.W, d.C,
                     -d.pad, d.slab_rows - d.pad, d.pad, d.slab_cols, x_pairs + m * x_pair_size);
      InterleavePairs(gs + n * image_g, both ? gs + (n + 1) * image_g : nullptr, image_g,
                      g_pairs.data() + m * g_pair_size);
    }
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.K; ++j) {
        float* tap = dk + (i * d.K + j) * d.C * d.O;
        for (int64_t c0 = 0; c0 < d.C; c0 += tiling.cb) {
          for (int64_t o0 = 0; o0 < d.O; o0 += 16 * tiling.no) {
            tiling.fn(x_pairs, x_pair_size, g_pairs.data(), g_pair_size, pairs, d.slab_cols,
                      d.stride, d.Ho, d.Wo, d.C, d.O, i, j, c0, o0, tap);
          }
        }
      }
    }
  });
}

#endif

// float32 x and dy, or bfloat16 ones (on vdpbf16ps where the library has it, else
// widened to float32 as they are read): the kernel gradient in float32 (the caller rounds
// it to the kernel's dtype).
template <ffi::DataType D>
ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<D> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t stride) {
  if (ffi::Error e = CheckShapes(x.dimensions(), dk->dimensions(), dy.dimensions(), stride);
      e.failure()) {
    return e;
  }
  const WeightGradShape shape(x.dimensions(), dy.dimensions(), dk->dimensions()[0], stride);
#if defined(__AVX512BF16__)
  if constexpr (D == ffi::BF16) {
    if (WeightGradAmx(pool, x.typed_data(), x.dimensions(), dy.typed_data(), dy.dimensions(),
                      shape.K, stride, dk->typed_data())) {
      return ffi::Error::Success();
    }
    WeightGradPairedBf16(pool, x.typed_data(), dy.typed_data(), shape, dk->typed_data());
    return ffi::Error::Success();
  }
#endif
  WeightGradOf(pool, x.typed_data(), dy.typed_data(), shape, dk->typed_data());
  return ffi::Error::Success();
}

}  // namespace

// Each takes two arrays and the stride, and writes one: float32 throughout, or bfloat16
// inputs (the forward pass: a bfloat16 output; the weight gradient: float32).
#define RESNET_CONV2D_BINDING(In, Out)  \
  ffi::Ffi::Bind()                      \
      .Ctx<ffi::ThreadPool>()           \
      .Arg<ffi::Buffer<ffi::In>>()      \
      .Arg<ffi::Buffer<ffi::In>>()      \
      .Ret<ffi::Buffer<ffi::Out>>()     \
      .Attr<int64_t>("stride")

XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_conv2d_forward, Forward, RESNET_CONV2D_BINDING(F32, F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_conv2d_weight_grad, WeightGrad<ffi::F32>,
                              RESNET_CONV2D_BINDING(F32, F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_conv2d_bf16_forward, ForwardBf16,
                              RESNET_CONV2D_BINDING(BF16, BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_conv2d_bf16_weight_grad, WeightGrad<ffi::BF16>,
                              RESNET_CONV2D_BINDING(BF16, F32));

// The instruction set whose tiles this library was built with: "avx512", "avx2" or
// "generic" (any other target, such as ARM). The Python side uses the kernels by default
// only where they were tuned and measured to win (resnet_jax/backend/cpu/kernels/choice.py).
extern "C" const char* resnet_kernels_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "generic";
#endif
}

// The bfloat16 matrix instructions this library's bfloat16 forward tiles use:
// "avx512_bf16" (vdpbf16ps), or "" where it was built without them (then
// resnet_conv2d_bf16_forward fails, and the Python side never calls it).
extern "C" const char* resnet_kernels_bf16() {
  if (AmxPermitted()) return "amx_bf16";
#if defined(__AVX512BF16__)
  return "avx512_bf16";
#else
  return "";
#endif
}

// Whether the bfloat16 convolutions may use AMX tiles where the library has them (the
// default) or keep to vdpbf16ps: for tests and benchmarks that compare the two.
extern "C" void resnet_kernels_set_amx(int on) { EnableAmx(on != 0); }
