// The bfloat16 convolutions on AMX tiles (amx.h): products summed in float32 tiles of 16x16
// by TDPBF16PS, which takes its two operands in 16-row tiles, reading each row in place
// from memory with a constant stride between rows.
//
// Rows of the tiles are output positions: runs of pixels whose inputs are a constant
// stride apart in the zero-padded slab of input rows (slabs.h). At stride 1 a whole band
// of output rows is one run, the slab's padding columns included (their outputs are
// computed and dropped): small feature maps (7x7, 14x14) then fill whole tiles. At larger
// strides each output row is a run. Runs are taken 16 positions per tile; positions past
// a run's end read the slab's spare zero rows and are dropped.
//
//   forward    y[pixels, outputs] = sum over taps and channel pairs of
//              x[pixels, channel pairs] (read in place) * kernel[channel pairs, outputs]
//   weight     dk^T[outputs, channels] at each tap = sum over pairs of images, positions of
//   gradient   dy^T[outputs, positions x image pairs] * x[positions, channels x image pairs]
//
// The weight gradient pairs images as vdpbf16ps does (conv2d.cc): the two images' values
// of a pixel are the pair TDPBF16PS sums; its dy^T is a transposed copy of each pair's
// output gradients, x is read in place from the pair's slab.

#include "conv2d_amx.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "amx.h"
#include "parallel.h"
#include "slabs.h"

namespace resnet_jax {

#if !defined(RESNET_JAX_AMX)

bool AmxPermitted() { return false; }
void EnableAmx(bool) {}
bool ForwardAmx(ffi::ThreadPool&, const uint16_t*, ffi::Span<const int64_t>, const uint16_t*,
                int64_t, uint16_t*, ffi::Span<const int64_t>, int64_t) {
  return false;
}
bool WeightGradAmx(ffi::ThreadPool&, const uint16_t*, ffi::Span<const int64_t>,
                   const uint16_t*, ffi::Span<const int64_t>, int64_t, int64_t, float*) {
  return false;
}

#else

bool AmxPermitted() { return amx::Permitted(); }
void EnableAmx(bool on) { amx::enabled.store(on); }

namespace {

// Loads `config` unless the thread's tiles already have that shape (LDTILECFG zeroes them,
// and other code on XLA's threads may have loaded another).
void EnsureTileConfig(const amx::TileConfig& config) {
  amx::TileConfig current;
  _tile_storeconfig(&current);
  if (std::memcmp(&current, &config, sizeof(config)) != 0) config.Load();
}

// The runs of output positions of `rows` output rows of width Wo, for inputs in a slab
// `slab_cols` wide: at stride 1 one run over all rows (position = row * slab_cols + col),
// else one per row (position = col).
struct Runs {
  int64_t count, length, stride, slab_cols, Wo;

  Runs(int64_t rows, int64_t Wo, int64_t stride, int64_t slab_cols)
      : count(stride == 1 ? 1 : rows), length(stride == 1 ? rows * slab_cols : Wo),
        stride(stride), slab_cols(slab_cols), Wo(Wo) {}

  // Where run k's inputs start in the slab, in pixels.
  int64_t Start(int64_t k) const { return k * stride * slab_cols; }
  // The output row and column of position p of run k; column >= Wo: not an output.
  std::pair<int64_t, int64_t> Output(int64_t k, int64_t p) const {
    return stride == 1 ? std::pair{p / slab_cols, p % slab_cols} : std::pair{k, p};
  }
  // Slab rows past the last that positions past a run's end (up to `block`) may read.
  int64_t SpareRows(int64_t block) const { return (block * stride) / slab_cols + 2; }
};

// ------------------------------------------------------------------------------ forward

// Stores float32 tile T (`rows` rows) rounded to bfloat16: row r is position p0 + r of run
// k, written to out (an output row's pixel 0) + row * row_step + col * O where it is an
// output.
template <int T>
void StoreOutputTile(const Runs& runs, int64_t k, int64_t p0, int64_t rows, uint16_t* out,
                     int64_t row_step, int64_t O) {
  alignas(64) float tile[16 * 16];
  amx::Store<T>(tile, 64);
  for (int64_t r = 0; r < rows && p0 + r < runs.length; ++r) {
    const auto [row, col] = runs.Output(k, p0 + r);
    if (col >= runs.Wo) continue;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + row * row_step + col * O),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(tile + 16 * r)));
  }
}

// MB x NB tiles (0-3) of M positions by 16 outputs, from position p0 of run k (whose
// inputs at tap (0, 0) start at `run`) and output o0: MB tiles of inputs (4, 5), NB of
// weights (6, 7), kc channels (kc / 2 pairs) at a time.
template <int MB, int NB, int... I>
void ForwardBlock(const uint16_t* run, const Runs& runs, int64_t k, int64_t p0, int64_t M,
                  int64_t K, int64_t C, int64_t kc, int64_t O, const uint16_t* kernel,
                  int64_t o0, uint16_t* out, int64_t row_step, std::integer_sequence<int, I...>) {
  (amx::Zero<I>(), ...);
  const int64_t x_stride = runs.stride * C * 2, k_stride = O * 4;
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < K; ++j) {
      const uint16_t* xs = run + (i * runs.slab_cols + j) * C;
      const uint16_t* ks = kernel + (i * K + j) * C * O + 2 * o0;
      for (int64_t c = 0; c < C; c += kc) {
        amx::Load<4>(xs + c, x_stride);
        if constexpr (MB == 2) amx::Load<5>(xs + M * runs.stride * C + c, x_stride);
        amx::Load<6>(ks + c * O, k_stride);
        if constexpr (NB == 2) amx::Load<7>(ks + c * O + 32, k_stride);
        (amx::Dot<I, 4 + I / NB, 6 + I % NB>(), ...);
      }
    }
  }
  (StoreOutputTile<I>(runs, k, p0 + M * (I / NB), M, out + o0 + 16 * (I % NB), row_step, O),
   ...);
}

template <int MB, int NB>
void ForwardTiles(ffi::ThreadPool& pool, const uint16_t* xs, ffi::Span<const int64_t> xd,
                  const uint16_t* kernel, int64_t K, uint16_t* ys, ffi::Span<const int64_t> yd,
                  int64_t stride) {
  const int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], Ho = yd[1], Wo = yd[2];
  const int64_t O = yd[3], pad = K / 2, kc = std::min<int64_t>(C, 32);
  // Positions per tile: 16, or a whole output row where runs are rows of fewer (a TDPBF16PS
  // takes time in proportion to its rows).
  const int64_t M = stride == 1 ? 16 : std::min<int64_t>(Wo, 16);
  const int64_t slab_cols = std::max(pad + W, (Wo - 1) * stride + K);
  // Tasks are bands of output rows of one image, enough of them to keep every worker busy,
  // or, where whole images are enough, groups of images: each pair of weight tiles is then
  // used for the positions of the whole group while it stays in L2 (image by image, the
  // deep layers' small maps streamed their 4.7 MB of weights from memory per image).
  const int64_t workers = NumWorkers(pool, N * Ho);
  const int64_t bands = std::min<int64_t>(Ho, (4 * workers + N - 1) / N);
  const int64_t band_rows = (Ho + bands - 1) / bands;
  const int64_t positions = Ho * (stride == 1 ? slab_cols : Wo);
  const int64_t group = bands > 1 ? 1 : std::clamp<int64_t>(2048 / positions, 1,
                                                            (N + 2 * workers - 1) / (2 * workers));
  const int64_t groups = (N + group - 1) / group;
  const int64_t slab_rows = (band_rows - 1) * stride + K +
                            Runs(band_rows, Wo, stride, slab_cols).SpareRows(M * MB);
  const int64_t slab_size = slab_rows * slab_cols * C;
  amx::TileConfig config;
  for (int t = 0; t < 4; ++t) config.Set(t, M, 64);
  for (int t = 4; t < 6; ++t) config.Set(t, M, 2 * kc);
  for (int t = 6; t < 8; ++t) config.Set(t, kc / 2, 64);
  // A 1x1 convolution at stride 1 reads its inputs in place, but for a last block that
  // would read past the band (past the array, in the last image).
  const bool in_place = K == 1 && stride == 1;
  ParallelFor(pool, groups * bands, workers, [&](int64_t task) {
    const int64_t n0 = task / bands * group, n1 = std::min(N, n0 + group);
    const int64_t h0 = (task % bands) * band_rows, h1 = std::min(Ho, h0 + band_rows);
    if (h0 >= h1) return;
    uint16_t* padded = in_place ? nullptr
                                : PaddedSlab<uint16_t, 2>(group * slab_rows, slab_cols, C);
    for (int64_t n = n0; n < n1 && !in_place; ++n) {
      FillSlab(xs + n * H * W * C, H, W, C, h0 * stride - pad, (h1 - 1) * stride - pad + K,
               pad, slab_cols, padded + (n - n0) * slab_size);
    }
    EnsureTileConfig(config);
    const Runs runs(h1 - h0, Wo, stride, slab_cols);
    for (int64_t o0 = 0; o0 < O; o0 += 16 * NB) {
      for (int64_t n = n0; n < n1; ++n) {
        const uint16_t* slab =
            in_place ? xs + (n * H + h0) * W * C : padded + (n - n0) * slab_size;
        uint16_t* out = ys + (n * Ho + h0) * Wo * O;
        for (int64_t k = 0; k < runs.count; ++k) {
          for (int64_t p0 = 0; p0 < runs.length; p0 += M * MB) {
            const uint16_t* run = slab + (runs.Start(k) + runs.stride * p0) * C;
            if (in_place && p0 + M * MB > runs.length) {
              thread_local std::vector<uint16_t> tail;
              tail.assign(M * MB * C, 0);
              std::memcpy(tail.data(), run, (runs.length - p0) * C * sizeof(uint16_t));
              run = tail.data();
            }
            ForwardBlock<MB, NB>(run, runs, k, p0, M, K, C, kc, O, kernel, o0, out, Wo * O,
                                 std::make_integer_sequence<int, MB * NB>());
          }
        }
      }
    }
  });
}

// --------------------------------------------------------------------- weight gradient

// out[c][r] = in[r][c] for 16 rows of 16 32-bit values (`in_step` and `out_step` apart),
// of which the first `rows` are read (the others are zeros) and the first `cols` of each
// out row written.
void Transpose16x16(const uint32_t* in, int64_t in_step, int64_t rows, uint32_t* out,
                    int64_t out_step, int64_t cols) {
  __m512i r[16], t[16];
  for (int k = 0; k < 16; ++k) {
    r[k] = k < rows ? _mm512_loadu_si512(in + k * in_step) : _mm512_setzero_si512();
  }
  for (int k = 0; k < 16; k += 2) {  // within 128-bit lanes: pairs of rows
    t[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
  }
  for (int k = 0; k < 16; k += 4) {  // quads of rows: r[k + q] holds lane column q
    r[k] = _mm512_unpacklo_epi64(t[k], t[k + 2]);
    r[k + 1] = _mm512_unpackhi_epi64(t[k], t[k + 2]);
    r[k + 2] = _mm512_unpacklo_epi64(t[k + 1], t[k + 3]);
    r[k + 3] = _mm512_unpackhi_epi64(t[k + 1], t[k + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // 128-bit lanes across quads of rows
    t[k] = _mm512_shuffle_i32x4(r[k], r[k + 4], 0x88);
    t[k + 4] = _mm512_shuffle_i32x4(r[k], r[k + 4], 0xdd);
    t[k + 8] = _mm512_shuffle_i32x4(r[k + 8], r[k + 12], 0x88);
    t[k + 12] = _mm512_shuffle_i32x4(r[k + 8], r[k + 12], 0xdd);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
  for (int k = 0; k < 8; ++k) {  // t[k] and t[k + 8] hold columns k % 4 + 4 (k / 4) (+ 8)
    const int col = k % 4 + 4 * (k / 4);
    _mm512_mask_storeu_epi32(out + col * out_step, mask,
                             _mm512_shuffle_i32x4(t[k], t[k + 8], 0x88));
    _mm512_mask_storeu_epi32(out + (col + 8) * out_step, mask,
                             _mm512_shuffle_i32x4(t[k], t[k + 8], 0xdd));
  }
}

// The shapes of the tiled weight gradient: its runs over all Ho output rows, each padded to
// a multiple of 16 positions, `length` in all per output channel.
struct TiledWeightGrad {
  WeightGradShape d;
  Runs runs;
  int64_t run_length, length, slab_rows, x_pair_size, g_pair_size;

  explicit TiledWeightGrad(const WeightGradShape& d)
      : d(d), runs(d.Ho, d.Wo, d.stride, d.slab_cols),
        run_length((runs.length + 15) / 16 * 16), length(runs.count * run_length),
        slab_rows(d.slab_rows + runs.SpareRows(16)),
        x_pair_size(slab_rows * d.slab_cols * d.C * 2), g_pair_size(d.O * length * 2) {}
};

// The two images' output gradients (b null: zeros), [Ho][Wo][O] each, as dy^T,
// [O][positions][2], zeros at positions that are not outputs: side by side in pairs, then
// transposed 16 pixels by 16 outputs at a time.
void TransposePairedGrads(const uint16_t* a, const uint16_t* b, const TiledWeightGrad& s,
                          uint16_t* out) {
  const int64_t Ho = s.d.Ho, Wo = s.d.Wo, O = s.d.O;
  thread_local std::vector<uint16_t> pairs;
  pairs.resize(Ho * Wo * O * 2);
  InterleavePairs(a, b, Ho * Wo * O, pairs.data());
  std::memset(out, 0, s.g_pair_size * sizeof(uint16_t));
  const uint32_t* in = reinterpret_cast<const uint32_t*>(pairs.data());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out);
  // Output row h's first position: h * slab_cols in the one run at stride 1, else run h's.
  const int64_t row_step = s.d.stride == 1 ? s.d.slab_cols : s.run_length;
  for (int64_t h = 0; h < Ho; ++h) {
    for (int64_t w0 = 0; w0 < Wo; w0 += 16) {
      for (int64_t o0 = 0; o0 < O; o0 += 16) {
        Transpose16x16(in + (h * Wo + w0) * O + o0, O, std::min<int64_t>(Wo - w0, 16),
                       dst + o0 * s.length + h * row_step + w0, s.length,
                       std::min<int64_t>(Wo - w0, 16));
      }
    }
  }
}

// Adds to dkT_tap [O, C] (dk^T at tap (i, j)) the tiles of outputs [o0, o0 + 16 MO) by
// input channels [c0, c0 + 16 NC), summed over `pairs` pairs of images: MO tiles of dy^T
// (4, 5), NC of x (6, 7), 16 positions at a time.
template <int MO, int NC, int... I>
void WeightGradBlock(const uint16_t* x_pairs, const uint16_t* g_pairs, int64_t pairs,
                     const TiledWeightGrad& s, int64_t i, int64_t j, int64_t o0, int64_t c0,
                     float* dkT_tap, std::integer_sequence<int, I...>) {
  const WeightGradShape& d = s.d;
  const int64_t dk_stride = d.C * 4;
  (amx::Load<I>(dkT_tap + (o0 + 16 * (I / NC)) * d.C + c0 + 16 * (I % NC), dk_stride), ...);
  const int64_t g_stride = s.length * 4, x_stride = d.stride * d.C * 4;
  for (int64_t m = 0; m < pairs; ++m) {
    const uint16_t* gs = g_pairs + m * s.g_pair_size + o0 * s.length * 2;
    const uint16_t* xs = x_pairs + m * s.x_pair_size + ((i * d.slab_cols + j) * d.C + c0) * 2;
    for (int64_t k = 0; k < s.runs.count; ++k) {
      const uint16_t* g_run = gs + k * s.run_length * 2;
      const uint16_t* x_run = xs + s.runs.Start(k) * d.C * 2;
      for (int64_t p0 = 0; p0 < s.run_length; p0 += 16) {
        amx::Load<4>(g_run + 2 * p0, g_stride);
        if constexpr (MO == 2) amx::Load<5>(g_run + 16 * s.length * 2 + 2 * p0, g_stride);
        amx::Load<6>(x_run + p0 * d.stride * d.C * 2, x_stride);
        if constexpr (NC == 2) amx::Load<7>(x_run + p0 * d.stride * d.C * 2 + 32, x_stride);
        (amx::Dot<I, 4 + I / NC, 6 + I % NC>(), ...);
      }
    }
  }
  (amx::Store<I>(dkT_tap + (o0 + 16 * (I / NC)) * d.C + c0 + 16 * (I % NC), dk_stride), ...);
}

// dk [K, K, C, O] summed as dk^T, [K, K, O, C], whose tiles TDPBF16PS accumulates in place
// (row by row: a transposed add per tile, at every group of images, was a third of the
// time on ResNet-50's deep layers, whose dk does not stay in cache), then transposed once.
template <int MO, int NC>
void WeightGradTiles(ffi::ThreadPool& pool, const uint16_t* xs, const uint16_t* gs,
                     const TiledWeightGrad& s, float* out) {
  const WeightGradShape& d = s.d;
  amx::TileConfig config;
  for (int t = 0; t < 8; ++t) config.Set(t, 16, 64);
  const int64_t image_x = d.H * d.W * d.C, image_g = d.Ho * d.Wo * d.O;
  const int64_t pair_bytes = 2 * (s.x_pair_size + s.g_pair_size);
  std::vector<float> transposed(d.taps());
  SumOverImageGroups(pool, (d.N + 1) / 2, d.taps(), pair_bytes, transposed.data(),
                     [&](int64_t p0, int64_t pairs, float* dkT) {
    uint16_t* x_pairs = PaddedSlab<uint16_t, 3>(pairs * s.slab_rows, d.slab_cols, 2 * d.C);
    thread_local std::vector<uint16_t> g_pairs;
    g_pairs.resize(pairs * s.g_pair_size);
    for (int64_t m = 0; m < pairs; ++m) {
      const int64_t n = 2 * (p0 + m);
      const bool both = n + 1 < d.N;
      FillPairedSlab(xs + n * image_x, both ? xs + (n + 1) * image_x : nullptr, d.H, d.W, d.C,
                     -d.pad, d.slab_rows - d.pad, d.pad, d.slab_cols,
                     x_pairs + m * s.x_pair_size);
      TransposePairedGrads(gs + n * image_g, both ? gs + (n + 1) * image_g : nullptr, s,
                           g_pairs.data() + m * s.g_pair_size);
    }
    EnsureTileConfig(config);
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.K; ++j) {
        float* tap = dkT + (i * d.K + j) * d.O * d.C;
        for (int64_t o0 = 0; o0 < d.O; o0 += 16 * MO) {
          for (int64_t c0 = 0; c0 < d.C; c0 += 16 * NC) {
            WeightGradBlock<MO, NC>(x_pairs, g_pairs.data(), pairs, s, i, j, o0, c0, tap,
                                    std::make_integer_sequence<int, MO * NC>());
          }
        }
      }
    }
  });
  // dk^T -> dk, 16 outputs by 16 channels at a time (as 32-bit values: bit for bit).
  const uint32_t* from = reinterpret_cast<const uint32_t*>(transposed.data());
  uint32_t* to = reinterpret_cast<uint32_t*>(out);
  ParallelFor(pool, d.O / 16, NumWorkers(pool, d.O / 16), [&](int64_t block) {
    const int64_t o0 = 16 * block;
    for (int64_t t = 0; t < d.K * d.K; ++t) {
      for (int64_t c0 = 0; c0 < d.C; c0 += 16) {
        Transpose16x16(from + (t * d.O + o0) * d.C + c0, d.C, 16,
                       to + (t * d.C + c0) * d.O + o0, d.O, 16);
      }
    }
  });
}

}  // namespace

bool ForwardAmx(ffi::ThreadPool& pool, const uint16_t* x, ffi::Span<const int64_t> xd,
                const uint16_t* paired_kernel, int64_t K, uint16_t* y,
                ffi::Span<const int64_t> yd, int64_t stride) {
  const int64_t C = xd[3], O = yd[3];
  if (!amx::Usable() || !(C % 32 == 0 || (C < 32 && C % 2 == 0))) return false;
  // Two tiles of positions where a band has more than 16 (a band is a whole image here
  // unless the batch is small; at stride > 1 a run is one output row).
  const bool two_p = stride == 1 ? yd[1] * yd[2] > 16 : yd[2] > 16, two_o = O % 32 == 0;
  if (two_p && two_o) ForwardTiles<2, 2>(pool, x, xd, paired_kernel, K, y, yd, stride);
  else if (two_p) ForwardTiles<2, 1>(pool, x, xd, paired_kernel, K, y, yd, stride);
  else if (two_o) ForwardTiles<1, 2>(pool, x, xd, paired_kernel, K, y, yd, stride);
  else ForwardTiles<1, 1>(pool, x, xd, paired_kernel, K, y, yd, stride);
  return true;
}

// (With fewer than 16 input channels, the stem's, vdpbf16ps is faster.)
bool WeightGradAmx(ffi::ThreadPool& pool, const uint16_t* x, ffi::Span<const int64_t> xd,
                   const uint16_t* dy, ffi::Span<const int64_t> gd, int64_t K, int64_t stride,
                   float* dk) {
  if (!amx::Usable() || xd[3] % 16 != 0) return false;
  const TiledWeightGrad s(WeightGradShape(xd, gd, K, stride));
  const bool two_o = s.d.O % 32 == 0, two_c = s.d.C % 32 == 0;
  if (two_o && two_c) WeightGradTiles<2, 2>(pool, x, dy, s, dk);
  else if (two_o) WeightGradTiles<2, 1>(pool, x, dy, s, dk);
  else if (two_c) WeightGradTiles<1, 2>(pool, x, dy, s, dk);
  else WeightGradTiles<1, 1>(pool, x, dy, s, dk);
  return true;
}

#endif

}  // namespace resnet_jax
