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
#include <vector>

#include "parallel.h"

namespace {

using namespace resnet_jax;  // NOLINT: vfloat, kLanes, LoadVector, StoreVector, ParallelFor, ffi

// A thread's zero-padded copy of some rows of one image: rows x cols pixels of c channels.
// Only the interior is written per call, so the zero border is kept while the shape stays.
float* PaddedSlab(int64_t rows, int64_t cols, int64_t c) {
  thread_local std::vector<float> data;
  thread_local int64_t shape[3] = {-1, -1, -1};
  if (shape[0] != rows || shape[1] != cols || shape[2] != c) {
    data.assign(rows * cols * c, 0.f);
    shape[0] = rows, shape[1] = cols, shape[2] = c;
  }
  return data.data();
}

// Copies input rows [r0, r1) of image `x` ([H, W, C]) into the slab from its column
// `pad` on; rows outside the image are zeros (the columns around them stay zero).
void FillSlab(const float* x, int64_t H, int64_t W, int64_t C, int64_t r0, int64_t r1,
              int64_t pad, int64_t slab_cols, float* slab) {
  for (int64_t r = r0; r < r1; ++r) {
    float* dst = slab + ((r - r0) * slab_cols + pad) * C;
    if (r < 0 || r >= H) {
      std::memset(dst, 0, W * C * sizeof(float));
    } else {
      std::memcpy(dst, x + r * W * C, W * C * sizeof(float));
    }
  }
}

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

using ForwardRowFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                              const float*, int64_t, float*, int64_t);

struct ForwardTile {
  int wb, no;
  ForwardRowFn fn;
};

#if defined(__AVX512F__)
// At most 28 accumulators: with the NO kernel vectors they fit AVX-512's 32 registers (the
// input is broadcast from memory inside the multiply-add).
constexpr ForwardTile kForwardTiles[] = {
    {16, 1, ForwardRow<16, 1>}, {14, 1, ForwardRow<14, 1>}, {8, 1, ForwardRow<8, 1>},
    {7, 1, ForwardRow<7, 1>},   {14, 2, ForwardRow<14, 2>}, {12, 2, ForwardRow<12, 2>},
    {8, 2, ForwardRow<8, 2>},   {7, 2, ForwardRow<7, 2>},   {7, 4, ForwardRow<7, 4>},
    {6, 4, ForwardRow<6, 4>},   {4, 4, ForwardRow<4, 4>},
};
#else
// 16 registers of 8 floats (AVX2; NEON's 32 of 4 hold as many floats): a 16-float vector
// takes two, and the broadcast input one more. 2 * (WB * NO + NO) + 1 <= 16.
constexpr ForwardTile kForwardTiles[] = {
    {6, 1, ForwardRow<6, 1>}, {5, 1, ForwardRow<5, 1>}, {4, 1, ForwardRow<4, 1>},
    {2, 2, ForwardRow<2, 2>},
};
#endif

// The tile that wastes the fewest columns of a row of width W, then the largest.
ForwardTile ChooseForwardTile(int64_t W, int64_t O) {
  ForwardTile best = kForwardTiles[0];
  double best_score = -1;
  for (const ForwardTile& t : kForwardTiles) {
    if (O % (16 * t.no) != 0) continue;
    const int64_t blocks = (W + t.wb - 1) / t.wb;
    const double score = double(W) / double(blocks * t.wb) + 1e-3 * t.wb * t.no;
    if (score > best_score) best = t, best_score = score;
  }
  return best;
}

int64_t OutputSize(int64_t in, int64_t K, int64_t stride) {
  return (in + 2 * (K / 2) - K) / stride + 1;
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

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  if (ffi::Error e = CheckShapes(x.dimensions(), kernel.dimensions(), y->dimensions(), stride);
      e.failure()) {
    return e;
  }
  const auto xd = x.dimensions(), yd = y->dimensions();
  const int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], Ho = yd[1], Wo = yd[2];
  const int64_t K = kernel.dimensions()[0], O = kernel.dimensions()[3], pad = K / 2;
  const float* xs = x.typed_data();
  const float* ks = kernel.typed_data();
  float* ys = y->typed_data();
  const ForwardTile tile = ChooseForwardTile(Wo, O);
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
    float* slab = PaddedSlab((band_rows - 1) * stride + K, slab_cols, C);
    FillSlab(xs + n * H * W * C, H, W, C, r0, r1, pad, slab_cols, slab);
    for (int64_t h = h0; h < h1; ++h) {
      float* out = ys + ((n * Ho + h) * Wo) * O;
      const float* rows = slab + (h - h0) * stride * slab_cols * C;
      for (int64_t o0 = 0; o0 < O; o0 += 16 * tile.no) {
        tile.fn(rows, slab_cols, K, stride, C, O, ks, Wo, out, o0);
      }
    }
  });
  return ffi::Error::Success();
}

// Adds to the kernel-gradient tile dk[i, j, c0:c0+CB, o0:o0+16*NO] the products of one
// image (dy: [H, W, O] at the output's size): the accumulators stay in registers over all
// its pixels.
template <int CB, int NO>
void WeightGradTile(const float* slab, int64_t slab_cols, int64_t stride, int64_t H, int64_t W,
                    int64_t C, const float* dy, int64_t O, int64_t i, int64_t j, int64_t c0,
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
    const float* gs = dy + h * W * O + o0;
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

using WeightGradTileFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  float*);

struct WeightGradTiling {
  int cb, no;
  WeightGradTileFn fn;
};

#if defined(__AVX512F__)
// In order of preference: 16 input channels (one cache line of x per pixel) by one vector
// of outputs; for fewer input channels, more output vectors, so that each pixel still
// feeds 8-16 accumulators.
constexpr WeightGradTiling kWeightGradTilings[] = {
    {16, 1, WeightGradTile<16, 1>}, {8, 2, WeightGradTile<8, 2>},
    {4, 4, WeightGradTile<4, 4>},   {3, 4, WeightGradTile<3, 4>},
    {2, 4, WeightGradTile<2, 4>},   {8, 1, WeightGradTile<8, 1>},
    {4, 2, WeightGradTile<4, 2>},   {3, 2, WeightGradTile<3, 2>},
    {4, 1, WeightGradTile<4, 1>},   {3, 1, WeightGradTile<3, 1>},
    {2, 1, WeightGradTile<2, 1>},   {1, 4, WeightGradTile<1, 4>},
    {1, 1, WeightGradTile<1, 1>},
};
#else
// 16 registers of 8 floats: CB * NO accumulators and NO gradient vectors of two registers
// each, and the broadcast input: 2 * (CB * NO + NO) + 1 <= 16.
constexpr WeightGradTiling kWeightGradTilings[] = {
    {6, 1, WeightGradTile<6, 1>}, {4, 1, WeightGradTile<4, 1>}, {2, 2, WeightGradTile<2, 2>},
    {3, 1, WeightGradTile<3, 1>}, {2, 1, WeightGradTile<2, 1>}, {1, 2, WeightGradTile<1, 2>},
    {1, 1, WeightGradTile<1, 1>},
};
#endif

WeightGradTiling ChooseWeightGradTiling(int64_t C, int64_t O) {
  for (const WeightGradTiling& t : kWeightGradTilings) {
    if (C % t.cb == 0 && O % (16 * t.no) == 0) return t;
  }
  return kWeightGradTilings[std::size(kWeightGradTilings) - 1];
}

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t stride) {
  if (ffi::Error e = CheckShapes(x.dimensions(), dk->dimensions(), dy.dimensions(), stride);
      e.failure()) {
    return e;
  }
  const auto xd = x.dimensions(), gd = dy.dimensions();
  const int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], Ho = gd[1], Wo = gd[2];
  const int64_t K = dk->dimensions()[0], O = dk->dimensions()[3], pad = K / 2;
  const float* xs = x.typed_data();
  const float* gs = dy.typed_data();
  const int64_t slab_rows = (Ho - 1) * stride + K;
  const int64_t slab_cols = std::max(pad + W, (Wo - 1) * stride + K);
  const int64_t taps = K * K * C * O;
  const WeightGradTiling tiling = ChooseWeightGradTiling(C, O);
  // The images are split into fixed chunks, each summed in order into its own copy of dk,
  // and the copies are added in order: the result does not depend on which thread ran
  // what, so a run repeats bit for bit. (Chunks: two per pool thread, at most 64 MiB.)
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t by_memory = std::max<int64_t>(1, (int64_t{64} << 20) / (taps * 4));
  const int64_t chunks = std::min({N, 2 * threads, by_memory});
  std::vector<float> partial(chunks * taps, 0.f);
  // Images are taken in groups whose padded copies and gradients fit in about 512 KiB of
  // cache; each tile of dk then sums over the group's images while it stays in L1. (Image
  // by image, deep layers with small maps and large kernels, 7x7x512 -> 3x3x512x512, would
  // stream the whole of dk through memory once per image.)
  const int64_t slab_size = slab_rows * slab_cols * C;
  const int64_t image_bytes = (slab_size + Ho * Wo * O) * 4;
  const int64_t group = std::max<int64_t>(1, (int64_t{512} << 10) / image_bytes);
  ParallelFor(pool, chunks, NumWorkers(pool, chunks), [&](int64_t chunk) {
    const int64_t n_end = (chunk + 1) * N / chunks;
    for (int64_t n0 = chunk * N / chunks; n0 < n_end; n0 += group) {
      const int64_t images = std::min(group, n_end - n0);
      float* slabs = PaddedSlab(images * slab_rows, slab_cols, C);
      for (int64_t m = 0; m < images; ++m) {
        FillSlab(xs + (n0 + m) * H * W * C, H, W, C, -pad, slab_rows - pad, pad, slab_cols,
                 slabs + m * slab_size);
      }
      for (int64_t i = 0; i < K; ++i) {
        for (int64_t j = 0; j < K; ++j) {
          float* tap = partial.data() + chunk * taps + (i * K + j) * C * O;
          for (int64_t c0 = 0; c0 < C; c0 += tiling.cb) {
            for (int64_t o0 = 0; o0 < O; o0 += 16 * tiling.no) {
              for (int64_t m = 0; m < images; ++m) {
                tiling.fn(slabs + m * slab_size, slab_cols, stride, Ho, Wo, C,
                          gs + (n0 + m) * Ho * Wo * O, O, i, j, c0, o0, tap);
              }
            }
          }
        }
      }
    }
  });
  float* out = dk->typed_data();
  std::memcpy(out, partial.data(), taps * sizeof(float));
  for (int64_t k = 1; k < chunks; ++k) {
    const float* part = partial.data() + k * taps;
    for (int64_t t = 0; t < taps; ++t) out[t] += part[t];
  }
  return ffi::Error::Success();
}

}  // namespace

// Both take two float32 arrays and the stride, and write one float32 array.
#define RESNET_CONV2D_BINDING           \
  ffi::Ffi::Bind()                      \
      .Ctx<ffi::ThreadPool>()           \
      .Arg<ffi::Buffer<ffi::F32>>()     \
      .Arg<ffi::Buffer<ffi::F32>>()     \
      .Ret<ffi::Buffer<ffi::F32>>()     \
      .Attr<int64_t>("stride")

XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_conv2d_forward, Forward, RESNET_CONV2D_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_conv2d_weight_grad, WeightGrad, RESNET_CONV2D_BINDING);

// The instruction set whose tiles this library was built with: "avx512", "avx2" or
// "generic" (any other target, such as ARM). The Python side uses the kernels by default
// only where they were tuned and measured to win (resnet_jax/cpu/kernels/choice.py).
extern "C" const char* resnet_kernels_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "generic";
#endif
}
