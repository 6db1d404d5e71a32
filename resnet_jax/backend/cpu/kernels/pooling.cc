// Max pooling for the CPU, called from XLA through its FFI: the 3x3/2 pooling after the
// ImageNet ResNets' stem, its largest activation.
//
//   resnet_max_pool_forward   y[n,h,w,c] = max over the window of x (padding: -inf)
//   resnet_max_pool_backward  dx: each dy[n,h,w,c] added at the first maximum of its window
//
// for NHWC float32 or bfloat16 (`_bf16`: the same maxima; dy summed in float32, rounded
// once) with C a multiple of 16, square windows of `window` pixels, `stride`,
// `padding` pixels on every side (output side (H + 2 padding - window) / stride + 1). The
// first maximum in row-major window order is the one XLA's gradient of reduce_window picks
// too, so the two agree on ties (frequent after a ReLU). A NaN counts as the maximum, as in
// XLA's forward pass, so that a diverged run shows. XLA:CPU computes this gradient by
// materialising window indices (iota) of the whole padded input and a scatter: about a
// twentieth of a ResNet-50 step on a 2-core CPU.

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "parallel.h"

namespace {

using namespace resnet_jax;  // NOLINT: vfloat, vint, kLanes, LoadVector, StoreVector, ParallelFor, ffi


struct Pool {
  int64_t n, h, w, c, ho, wo, window, stride, padding;

  // The window rows (or columns) [first, last) of output position `o` inside [0, size).
  void Span(int64_t o, int64_t size, int64_t& first, int64_t& last) const {
    first = std::max<int64_t>(0, o * stride - padding);
    last = std::min<int64_t>(size, o * stride - padding + window);
  }
};

ffi::ErrorOr<Pool> PoolOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y,
                          int64_t window, int64_t stride, int64_t padding) {
  const auto out = [&](int64_t side) { return (side + 2 * padding - window) / stride + 1; };
  if (x.size() != 4 || y.size() != 4 || x[3] % 16 != 0 || window < 1 || stride < 1 ||
      padding < 0 || padding >= window || y[0] != x[0] || y[3] != x[3] || y[1] != out(x[1]) ||
      y[2] != out(x[2]) || y[1] < 1 || y[2] < 1) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "max_pool: needs NHWC activations with a multiple of 16 channels, padding < window, "
        "and matching output shapes"));
  }
  return Pool{x[0], x[1], x[2], x[3], y[1], y[2], window, stride, padding};
}

// Keeps the running maximum and the window position it came from: a later value replaces
// it only if strictly greater, or NaN (where the maximum so far is not).
inline void Consider(vfloat v, int32_t position, vfloat& best, vint& where) {
  const vint take = (vint)(v > best) | ((vint)(v != v) & ~(vint)(best != best));
  best = (vfloat)(((vint)v & take) | ((vint)best & ~take));
  where = (position & take) | (where & ~take);
}

// Calls body(ow, c, best, where, h0, h1, w0, w1) for every window of output row oh of image
// x ([H, W, C]) and every 16 channels from c: the maximum over the window and where it is
// (as h * W + w); the window's rows are [h0, h1) and its columns [w0, w1).
template <typename T, typename F>
void ForRowWindows(const T* x, const Pool& p, int64_t oh, F body) {
  int64_t h0, h1;
  p.Span(oh, p.h, h0, h1);
  for (int64_t ow = 0; ow < p.wo; ++ow) {
    int64_t w0, w1;
    p.Span(ow, p.w, w0, w1);
    for (int64_t c = 0; c < p.c; c += kLanes) {
      vfloat best = vfloat{} - __builtin_inff();
      vint where = {};
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t w = w0; w < w1; ++w) {
          Consider(LoadVector(x + (h * p.w + w) * p.c + c), int32_t(h * p.w + w), best, where);
        }
      }
      body(ow, c, best, where, h0, h1, w0, w1);
    }
  }
}

template <ffi::DataType D>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::ResultBuffer<D> y,
                   int64_t window, int64_t stride, int64_t padding) {
  const auto p = PoolOf(x.dimensions(), y->dimensions(), window, stride, padding);
  if (p.has_error()) return p.error();
  const auto* xs = x.typed_data();
  auto* ys = y->typed_data();
  const int64_t rows = p->n * p->ho;
  ParallelFor(pool, rows, NumWorkers(pool, rows), [&](int64_t row) {
    const int64_t n = row / p->ho, oh = row % p->ho;
    auto* out = ys + (n * p->ho + oh) * p->wo * p->c;
    ForRowWindows(xs + n * p->h * p->w * p->c, *p, oh,
                  [&](int64_t ow, int64_t c, vfloat best, vint, int64_t, int64_t, int64_t,
                      int64_t) { StoreVector(out + ow * p->c + c, best); });
  });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<D> dy,
                    ffi::ResultBuffer<D> dx, int64_t window, int64_t stride,
                    int64_t padding) {
  using T = ffi::NativeType<D>;
  const auto p = PoolOf(x.dimensions(), dy.dimensions(), window, stride, padding);
  if (p.has_error()) return p.error();
  const auto xd = x.dimensions(), dxd = dx->dimensions();
  if (!std::equal(xd.begin(), xd.end(), dxd.begin(), dxd.end())) {
    return ffi::Error::InvalidArgument("max_pool: the input gradient must have x's shape");
  }
  const T *xs = x.typed_data(), *gs = dy.typed_data();
  T* dxs = dx->typed_data();
  // One task per image: windows overlap, so an image's dx is written by one thread only.
  // It is summed in float32: in place, or in a thread's buffer for bfloat16, rounded once.
  ParallelFor(pool, p->n, NumWorkers(pool, p->n), [&](int64_t n) {
    const int64_t image = p->h * p->w * p->c;
    const T* xi = xs + n * image;
    thread_local std::vector<float> sums;
    float* dxi;
    if constexpr (std::is_same_v<T, float>) {
      dxi = dxs + n * image;
    } else {
      sums.resize(image);
      dxi = sums.data();
    }
    std::memset(dxi, 0, image * sizeof(float));
    for (int64_t oh = 0; oh < p->ho; ++oh) {
      const T* g_row = gs + (n * p->ho + oh) * p->wo * p->c;
      ForRowWindows(xi, *p, oh, [&](int64_t ow, int64_t c, vfloat, vint where, int64_t h0,
                                    int64_t h1, int64_t w0, int64_t w1) {
        const vfloat g = LoadVector(g_row + ow * p->c + c);
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t w = w0; w < w1; ++w) {
            float* d = dxi + (h * p->w + w) * p->c + c;
            const vint mine = where == int32_t(h * p->w + w);
            StoreVector(d, LoadVector(d) + (vfloat)((vint)g & mine));
          }
        }
      });
    }
    if constexpr (!std::is_same_v<T, float>) {
      for (int64_t i = 0; i < image; i += kLanes) StoreVector(dxs + n * image + i, LoadVector(dxi + i));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

#define RESNET_MAX_POOL_HANDLERS(SUFFIX, D)                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_max_pool_forward##SUFFIX, Forward<D>,          \
                                ffi::Ffi::Bind()                                       \
                                    .Ctx<ffi::ThreadPool>()                            \
                                    .Arg<ffi::Buffer<D>>()                             \
                                    .Ret<ffi::Buffer<D>>()                             \
                                    .Attr<int64_t>("window")                           \
                                    .Attr<int64_t>("stride")                           \
                                    .Attr<int64_t>("padding"));                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_max_pool_backward##SUFFIX, Backward<D>,        \
                                ffi::Ffi::Bind()                                       \
                                    .Ctx<ffi::ThreadPool>()                            \
                                    .Arg<ffi::Buffer<D>>()                             \
                                    .Arg<ffi::Buffer<D>>()                             \
                                    .Ret<ffi::Buffer<D>>()                             \
                                    .Attr<int64_t>("window")                           \
                                    .Attr<int64_t>("stride")                           \
                                    .Attr<int64_t>("padding"));

RESNET_MAX_POOL_HANDLERS(, ffi::F32)
RESNET_MAX_POOL_HANDLERS(_bf16, ffi::BF16)
