// Batch normalisation fused with what follows it in a ResNet (a residual addition, a ReLU),
// for the CPU, called from XLA through its FFI.
//
// XLA:CPU runs each elementwise fusion on one thread and materialises x - mean for the
// backward pass: the BatchNorm and ReLU passes of a CIFAR ResNet step took as long as its
// convolutions. These make the fewest passes over memory a training BN needs, on every
// core of XLA's intra-op pool. Activations are float32 [..., C] (C a multiple of 16),
// viewed as M rows of C channels, or bfloat16 (the `_bf16` handlers: computed in float32,
// every output activation rounded once); per-channel vectors are float32:
//
//   resnet_bn_stats        x -> [mean; var] over the rows (biased variance), [2, C]
//   resnet_bn_apply        x, [a; b] -> y = act(x * a + b)            act: ReLU or identity
//   resnet_bn_apply_add    x, [a; b], r -> y = act(x * a + b + r)
//   resnet_bn_grad_stats   dy, y, x, mean -> [sum dz; sum dz * (x - mean)], [2, C]
//   resnet_bn_grad_input   dy, y, x, [p; q; s; mean] -> dx = dz * p + (x - mean) * q + s
//   resnet_bn_grad_input_dz  the same, and dz too (the residual's gradient)
//
// where dz = dy where y > 0 and 0 elsewhere with the ReLU (y: the forward output), else dy.
// The caller turns these sums into the gradients (see batchnorm.py). Sums are taken in
// float32 over fixed chunks of rows, of values centred near the mean, then in float64 over
// the chunks in order: the result does not depend on the number of threads or on which
// ran what.

#include <cstdint>
#include <utility>
#include <vector>

#include "parallel.h"

namespace {

using namespace resnet_jax;  // NOLINT: vfloat, vint, kLanes, LoadVector, StoreVector, ParallelFor, ffi


// Keeps v where keep is true (all bits set), 0 elsewhere.
inline vfloat Select(vint keep, vfloat v) { return (vfloat)((vint)v & keep); }

// max(v, 0) that keeps NaN (as jax.nn.relu does), so that a diverged run shows as such.
inline vfloat Relu(vfloat v) { return Select(~(vint)(v < vfloat{}), v); }

// Rows per chunk: about 16K floats, so that a chunk stays in L2 while each group of 16
// channels is summed over it. Depends only on C: sums are the same on every machine.
int64_t ChunkRows(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

struct Rows {
  int64_t m, c;
};

// M rows of C channels; InvalidArgument unless C is a multiple of 16.
ffi::ErrorOr<Rows> RowsOf(ffi::Span<const int64_t> dims) {
  if (dims.size() == 0 || dims.back() % 16 != 0) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "batchnorm: needs [..., C] activations, C a multiple of 16"));
  }
  int64_t m = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) m *= dims[i];
  return Rows{m, dims.back()};
}

ffi::Error CheckSameShape(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  if (a.size() != b.size() || !std::equal(a.begin(), a.end(), b.begin())) {
    return ffi::Error::InvalidArgument("batchnorm: activations of different shapes");
  }
  return ffi::Error::Success();
}

ffi::Error CheckVectors(ffi::Span<const int64_t> dims, int64_t count, int64_t C) {
  if (dims.size() != 2 || dims[0] != count || dims[1] != C) {
    return ffi::Error::InvalidArgument("batchnorm: per-channel vectors of the wrong shape");
  }
  return ffi::Error::Success();
}

// Runs body(row0, row1) over fixed chunks of rows on every worker.
template <typename F>
void ForRows(ffi::ThreadPool& pool, Rows rows, F body) {
  const int64_t chunk_rows = ChunkRows(rows.c);
  const int64_t chunks = std::max<int64_t>(1, (rows.m + chunk_rows - 1) / chunk_rows);
  ParallelFor(pool, chunks, NumWorkers(pool, chunks), [&](int64_t chunk) {
    const int64_t r0 = chunk * chunk_rows;
    body(r0, std::min(rows.m, r0 + chunk_rows));
  });
}

// Per channel, [sum u; sum u * v] over all rows, where (u, v) = terms(i, c) for element
// i = r * C + c of each 16 channels from c: float32 within each chunk of rows, float64
// over the chunks, added in chunk order.
template <typename F>
std::vector<double> ChunkedSums(ffi::ThreadPool& pool, Rows rows, F terms) {
  const int64_t C = rows.c, chunk_rows = ChunkRows(C);
  const int64_t chunks = std::max<int64_t>(1, (rows.m + chunk_rows - 1) / chunk_rows);
  std::vector<double> partial(chunks * 2 * C, 0.0);
  ForRows(pool, rows, [&](int64_t r0, int64_t r1) {
    double* out = partial.data() + (r0 / chunk_rows) * 2 * C;
    for (int64_t c = 0; c < C; c += kLanes) {
      vfloat sum = {}, sum_product = {};
      for (int64_t r = r0; r < r1; ++r) {
        const auto [u, v] = terms(r * C + c, c);
        sum += u;
        sum_product += u * v;
      }
      for (int k = 0; k < kLanes; ++k) {
        out[c + k] += sum[k];
        out[C + c + k] += sum_product[k];
      }
    }
  });
  std::vector<double> total(2 * C, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t i = 0; i < 2 * C; ++i) total[i] += partial[chunk * 2 * C + i];
  }
  return total;
}

template <ffi::DataType D>
ffi::Error Stats(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::ResultBuffer<ffi::F32> stats) {
  const auto rows = RowsOf(x.dimensions());
  if (rows.has_error()) return rows.error();
  const int64_t M = rows->m, C = rows->c;
  if (ffi::Error e = CheckVectors(stats->dimensions(), 2, C); e.failure()) return e;
  const auto* xs = x.typed_data();
  // Sums of x - shift, shift = the first row: near the mean, so that neither the float32
  // sums nor E[d^2] - E[d]^2 lose the digits of a variance that is small beside the mean.
  const auto* shift = xs;
  const std::vector<double> sums = ChunkedSums(pool, *rows, [&](int64_t i, int64_t c) {
    const vfloat d = LoadVector(xs + i) - LoadVector(shift + c);
    return std::pair(d, d);
  });
  float* out = stats->typed_data();
  for (int64_t c = 0; c < C; ++c) {
    const double mean_d = sums[c] / double(M);
    out[c] = float(double(ToFloat(shift[c])) + mean_d);
    out[C + c] = float(std::max(0.0, sums[C + c] / double(M) - mean_d * mean_d));
  }
  return ffi::Error::Success();
}

// y = act(x * a + b [+ residual]); residual may be null.
template <ffi::DataType D>
ffi::Error Apply(ffi::ThreadPool& pool, const ffi::Buffer<D>& x,
                 const ffi::Buffer<ffi::F32>& coef, const ffi::NativeType<D>* residual,
                 ffi::ResultBuffer<D>& y, bool relu) {
  const auto rows = RowsOf(x.dimensions());
  if (rows.has_error()) return rows.error();
  const int64_t C = rows->c;
  if (ffi::Error e = CheckVectors(coef.dimensions(), 2, C); e.failure()) return e;
  if (ffi::Error e = CheckSameShape(x.dimensions(), y->dimensions()); e.failure()) return e;
  const auto* xs = x.typed_data();
  const float *a = coef.typed_data(), *b = a + C;
  auto* ys = y->typed_data();
  ForRows(pool, *rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < C; c += kLanes) {
        const int64_t i = r * C + c;
        vfloat v = LoadVector(xs + i) * LoadVector(a + c) + LoadVector(b + c);
        if (residual != nullptr) v += LoadVector(residual + i);
        StoreVector(ys + i, relu ? Relu(v) : v);
      }
    }
  });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error ApplyOnly(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<ffi::F32> coef,
                     ffi::ResultBuffer<D> y, bool relu) {
  return Apply<D>(pool, x, coef, nullptr, y, relu);
}

template <ffi::DataType D>
ffi::Error ApplyAdd(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<ffi::F32> coef,
                    ffi::Buffer<D> residual, ffi::ResultBuffer<D> y, bool relu) {
  if (ffi::Error e = CheckSameShape(x.dimensions(), residual.dimensions()); e.failure()) {
    return e;
  }
  return Apply<D>(pool, x, coef, residual.typed_data(), y, relu);
}

// dz: dy where the forward output y is positive (with the ReLU), else dy.
template <typename T>
inline vfloat OutputGrad(const T* dy, const T* y, int64_t i, bool relu) {
  const vfloat g = LoadVector(dy + i);
  return relu ? Select((vint)(LoadVector(y + i) > vfloat{}), g) : g;
}

template <ffi::DataType D>
ffi::Error CheckGradShapes(const ffi::Buffer<D>& dy, const ffi::Buffer<D>& y,
                           const ffi::Buffer<D>& x) {
  if (ffi::Error e = CheckSameShape(dy.dimensions(), y.dimensions()); e.failure()) return e;
  return CheckSameShape(dy.dimensions(), x.dimensions());
}

template <ffi::DataType D>
ffi::Error GradStats(ffi::ThreadPool pool, ffi::Buffer<D> dy, ffi::Buffer<D> y,
                     ffi::Buffer<D> x, ffi::Buffer<ffi::F32> mean,
                     ffi::ResultBuffer<ffi::F32> sums_out, bool relu) {
  const auto rows = RowsOf(x.dimensions());
  if (rows.has_error()) return rows.error();
  const int64_t C = rows->c;
  if (ffi::Error e = CheckGradShapes(dy, y, x); e.failure()) return e;
  if (ffi::Error e = CheckVectors(sums_out->dimensions(), 2, C); e.failure()) return e;
  if (mean.element_count() != size_t(C)) {
    return ffi::Error::InvalidArgument("batchnorm: mean of the wrong size");
  }
  const auto *gs = dy.typed_data(), *ys = y.typed_data(), *xs = x.typed_data();
  const float* mu = mean.typed_data();
  const std::vector<double> sums = ChunkedSums(pool, *rows, [&](int64_t i, int64_t c) {
    return std::pair(OutputGrad(gs, ys, i, relu), LoadVector(xs + i) - LoadVector(mu + c));
  });
  float* out = sums_out->typed_data();
  for (int64_t i = 0; i < 2 * C; ++i) out[i] = float(sums[i]);
  return ffi::Error::Success();
}

// dx = dz * p + (x - mean) * q + s, and dz where dz_out is not null.
template <ffi::DataType D>
ffi::Error GradInput(ffi::ThreadPool& pool, const ffi::Buffer<D>& dy, const ffi::Buffer<D>& y,
                     const ffi::Buffer<D>& x, const ffi::Buffer<ffi::F32>& coef,
                     ffi::ResultBuffer<D>& dx, ffi::NativeType<D>* dz_out, bool relu) {
  const auto rows = RowsOf(x.dimensions());
  if (rows.has_error()) return rows.error();
  const int64_t C = rows->c;
  if (ffi::Error e = CheckGradShapes(dy, y, x); e.failure()) return e;
  if (ffi::Error e = CheckSameShape(x.dimensions(), dx->dimensions()); e.failure()) return e;
  if (ffi::Error e = CheckVectors(coef.dimensions(), 4, C); e.failure()) return e;
  const auto *gs = dy.typed_data(), *ys = y.typed_data(), *xs = x.typed_data();
  const float *p = coef.typed_data(), *q = p + C, *s = p + 2 * C, *mu = p + 3 * C;
  auto* dxs = dx->typed_data();
  ForRows(pool, *rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < C; c += kLanes) {
        const int64_t i = r * C + c;
        const vfloat dz = OutputGrad(gs, ys, i, relu);
        StoreVector(dxs + i, dz * LoadVector(p + c) + (LoadVector(xs + i) - LoadVector(mu + c)) * LoadVector(q + c) +
                           LoadVector(s + c));
        if (dz_out != nullptr) StoreVector(dz_out + i, dz);
      }
    }
  });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error GradInputOnly(ffi::ThreadPool pool, ffi::Buffer<D> dy, ffi::Buffer<D> y,
                         ffi::Buffer<D> x, ffi::Buffer<ffi::F32> coef, ffi::ResultBuffer<D> dx,
                         bool relu) {
  return GradInput<D>(pool, dy, y, x, coef, dx, nullptr, relu);
}

template <ffi::DataType D>
ffi::Error GradInputAndOutput(ffi::ThreadPool pool, ffi::Buffer<D> dy, ffi::Buffer<D> y,
                              ffi::Buffer<D> x, ffi::Buffer<ffi::F32> coef,
                              ffi::ResultBuffer<D> dx, ffi::ResultBuffer<D> dz, bool relu) {
  if (ffi::Error e = CheckSameShape(x.dimensions(), dz->dimensions()); e.failure()) return e;
  return GradInput<D>(pool, dy, y, x, coef, dx, dz->typed_data(), relu);
}

}  // namespace

// Every handler takes XLA's intra-op pool; per-channel vectors are float32 arrays, and
// activations float32 (the plain names) or bfloat16 (`_bf16`).
#define RESNET_BN_BINDING ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()
#define RESNET_BN_HANDLERS(SUFFIX, D)                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_bn_stats##SUFFIX, Stats<D>,                          \
                                RESNET_BN_BINDING.Arg<ffi::Buffer<D>>()                      \
                                    .Ret<ffi::Buffer<ffi::F32>>());                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_bn_apply##SUFFIX, ApplyOnly<D>,                      \
                                RESNET_BN_BINDING.Arg<ffi::Buffer<D>>()                      \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Ret<ffi::Buffer<D>>()                                   \
                                    .Attr<bool>("relu"));                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_bn_apply_add##SUFFIX, ApplyAdd<D>,                   \
                                RESNET_BN_BINDING.Arg<ffi::Buffer<D>>()                      \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Ret<ffi::Buffer<D>>()                                   \
                                    .Attr<bool>("relu"));                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_bn_grad_stats##SUFFIX, GradStats<D>,                 \
                                RESNET_BN_BINDING.Arg<ffi::Buffer<D>>()                      \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Ret<ffi::Buffer<ffi::F32>>()                            \
                                    .Attr<bool>("relu"));                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_bn_grad_input##SUFFIX, GradInputOnly<D>,             \
                                RESNET_BN_BINDING.Arg<ffi::Buffer<D>>()                      \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Ret<ffi::Buffer<D>>()                                   \
                                    .Attr<bool>("relu"));                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(resnet_bn_grad_input_dz##SUFFIX, GradInputAndOutput<D>,     \
                                RESNET_BN_BINDING.Arg<ffi::Buffer<D>>()                      \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Arg<ffi::Buffer<D>>()                                   \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Ret<ffi::Buffer<D>>()                                   \
                                    .Ret<ffi::Buffer<D>>()                                   \
                                    .Attr<bool>("relu"));

RESNET_BN_HANDLERS(, ffi::F32)
RESNET_BN_HANDLERS(_bf16, ffi::BF16)
