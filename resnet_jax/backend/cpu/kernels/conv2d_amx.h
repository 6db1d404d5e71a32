// The bfloat16 convolutions of conv2d.cc on AMX tiles (conv2d_amx.cc), where the library
// was built for a CPU with them and the OS grants the tile state; each returns false,
// having done nothing, where it does not apply, and the caller uses vdpbf16ps.

#ifndef RESNET_JAX_CONV2D_AMX_H_
#define RESNET_JAX_CONV2D_AMX_H_

#include <cstdint>

#include "parallel.h"

namespace resnet_jax {

// Whether the library has AMX tiles and the OS lets this process use them.
bool AmxPermitted();

// Lets the convolutions use the tiles (the default) or not: for tests and benchmarks.
void EnableAmx(bool on);

// y [N, Ho, Wo, O] = x [N, H, W, C] (*) kernel, bfloat16 (summed in float32, rounded once);
// the kernel in channel pairs, [K, K, C/2, O, 2]. Takes C a multiple of 32, or even and
// below 32.
bool ForwardAmx(ffi::ThreadPool& pool, const uint16_t* x, ffi::Span<const int64_t> xd,
                const uint16_t* paired_kernel, int64_t K, uint16_t* y,
                ffi::Span<const int64_t> yd, int64_t stride);

// dk [K, K, C, O] (float32) from bfloat16 x [N, H, W, C] and dy [N, Ho, Wo, O]. Takes C a
// multiple of 16.
bool WeightGradAmx(ffi::ThreadPool& pool, const uint16_t* x, ffi::Span<const int64_t> xd,
                   const uint16_t* dy, ffi::Span<const int64_t> gd, int64_t K, int64_t stride,
                   float* dk);

}  // namespace resnet_jax

#endif  // RESNET_JAX_CONV2D_AMX_H_
