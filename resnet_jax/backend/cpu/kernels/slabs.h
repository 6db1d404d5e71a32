// What the convolution kernels (conv2d.cc, conv2d_amx.cc) share: zero-padded copies of
// input rows ("slabs"), the shapes of a weight gradient and its deterministic sum over
// images, and bfloat16 values of two images side by side in pairs.

#ifndef RESNET_JAX_SLABS_H_
#define RESNET_JAX_SLABS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "parallel.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace resnet_jax {

inline int64_t OutputSize(int64_t in, int64_t K, int64_t stride) {
  return (in + 2 * (K / 2) - K) / stride + 1;
}

// A thread's zero-padded copy of some rows of one image: rows x cols pixels of c channels.
// Only the interior is written per call, so the zero border is kept while the shape stays
// (kernels that alternate on a thread with other shapes take another `Slot`).
template <typename T, int Slot = 0>
T* PaddedSlab(int64_t rows, int64_t cols, int64_t c) {
  thread_local std::vector<T> data;
  thread_local int64_t shape[3] = {-1, -1, -1};
  if (shape[0] != rows || shape[1] != cols || shape[2] != c) {
    data.assign(rows * cols * c, T{});
    shape[0] = rows, shape[1] = cols, shape[2] = c;
  }
  return data.data();
}

// Copies input rows [r0, r1) of image `x` ([H, W, C]) into the slab from its column
// `pad` on; rows outside the image are zeros (the columns around them stay zero). bfloat16
// rows copied into a float32 slab are widened (exactly).
template <typename Src, typename Dst>
void FillSlab(const Src* x, int64_t H, int64_t W, int64_t C, int64_t r0, int64_t r1,
              int64_t pad, int64_t slab_cols, Dst* slab) {
  for (int64_t r = r0; r < r1; ++r) {
    Dst* dst = slab + ((r - r0) * slab_cols + pad) * C;
    if (r < 0 || r >= H) {
      std::memset(dst, 0, W * C * sizeof(Dst));
    } else if constexpr (std::is_same_v<Src, Dst>) {
      std::memcpy(dst, x + r * W * C, W * C * sizeof(Dst));
    } else {
      const Src* src = x + r * W * C;
      const int64_t n = W * C, vectors = n - n % kLanes;
      for (int64_t i = 0; i < vectors; i += kLanes) StoreVector(dst + i, LoadVector(src + i));
      for (int64_t i = vectors; i < n; ++i) dst[i] = Bf16ToFloat(src[i]);
    }
  }
}

// The shapes of a weight gradient: x [N, H, W, C], dy [N, Ho, Wo, O], dk [K, K, C, O].
struct WeightGradShape {
  int64_t N, H, W, C, Ho, Wo, O, K, pad, stride, slab_rows, slab_cols;

  WeightGradShape(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> gd, int64_t K,
                  int64_t stride)
      : N(xd[0]), H(xd[1]), W(xd[2]), C(xd[3]), Ho(gd[1]), Wo(gd[2]), O(gd[3]), K(K),
        pad(K / 2), stride(stride), slab_rows((Ho - 1) * stride + K),
        slab_cols(std::max(pad + W, (Wo - 1) * stride + K)) {}

  int64_t taps() const { return K * K * C * O; }
};

// dk = the sum over all images of add_group(n0, images, dk_copy)'s products: the images
// are split into fixed chunks, each summed in order into its own copy of dk, and the
// copies are added in order, so the result does not depend on which thread ran what and a
// run repeats bit for bit (chunks: two per pool thread, at most 64 MiB). Within a chunk,
// images are taken in groups of about 512 KiB of inputs (`image_bytes` each): each tile
// of dk then sums over the group's images while it stays in L1. (Image by image, deep
// layers with small maps and large kernels, 7x7x512 -> 3x3x512x512, would stream the
// whole of dk through memory once per image.)
template <typename F>
void SumOverImageGroups(ffi::ThreadPool& pool, int64_t N, int64_t taps, int64_t image_bytes,
                        float* out, F add_group) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t by_memory = std::max<int64_t>(1, (int64_t{64} << 20) / (taps * 4));
  const int64_t chunks = std::min({N, 2 * threads, by_memory});
  std::vector<float> partial(chunks * taps, 0.f);
  const int64_t group = std::max<int64_t>(1, (int64_t{512} << 10) / image_bytes);
  ParallelFor(pool, chunks, NumWorkers(pool, chunks), [&](int64_t chunk) {
    const int64_t n_end = (chunk + 1) * N / chunks;
    for (int64_t n0 = chunk * N / chunks; n0 < n_end; n0 += group) {
      add_group(n0, std::min(group, n_end - n0), partial.data() + chunk * taps);
    }
  });
  std::memcpy(out, partial.data(), taps * sizeof(float));
  for (int64_t k = 1; k < chunks; ++k) {
    const float* part = partial.data() + k * taps;
    for (int64_t t = 0; t < taps; ++t) out[t] += part[t];
  }
}

#if defined(__AVX512BF16__)
// out[2k] = a[k], out[2k + 1] = b[k] (0 where b is null), k < n: two rows of bfloat16
// values side by side in pairs, as vdpbf16ps reads them.
inline void InterleavePairs(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  const __m512i order = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
      4, 19, 3, 18, 2, 17, 1, 16, 0);
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
    const __m256i hi = b ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k))
                         : _mm256_setzero_si256();
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    _mm512_storeu_si512(out + 2 * k, _mm512_permutexvar_epi16(order, both));
  }
  for (; k < n; ++k) {
    out[2 * k] = a[k];
    out[2 * k + 1] = b ? b[k] : 0;
  }
}

// Input rows [r0, r1) of images `a` and `b` ([H, W, C] each; b null: zeros) side by side,
// [rows][slab_cols][C][2], into a slab of pairs as FillSlab lays out one image.
inline void FillPairedSlab(const uint16_t* a, const uint16_t* b, int64_t H, int64_t W, int64_t C,
                    int64_t r0, int64_t r1, int64_t pad, int64_t slab_cols, uint16_t* slab) {
  for (int64_t r = r0; r < r1; ++r) {
    uint16_t* dst = slab + ((r - r0) * slab_cols + pad) * C * 2;
    if (r < 0 || r >= H) {
      std::memset(dst, 0, W * C * 2 * sizeof(uint16_t));
    } else {
      InterleavePairs(a + r * W * C, b ? b + r * W * C : nullptr, W * C, dst);
    }
  }
}
#endif

}  // namespace resnet_jax

#endif  // RESNET_JAX_SLABS_H_
