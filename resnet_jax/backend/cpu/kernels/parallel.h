// What the kernels of this package share: the target's vectors and a parallel loop over
// XLA's intra-op thread pool.

#ifndef RESNET_JAX_KERNELS_PARALLEL_H_
#define RESNET_JAX_KERNELS_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace resnet_jax {

namespace ffi = xla::ffi;

// The target's own vector: 16 floats with AVX-512, 8 with AVX, else 4 (SSE, NEON); wider
// generic vectors than the registers GCC keeps in memory. Activations have a multiple of
// 16 channels, so of kLanes too. Accessed through pointers to floats (may_alias), unaligned
// (aligned(4)).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
using vfloat = float __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
using vint = int32_t __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));

inline vfloat LoadVector(const float* p) { return *reinterpret_cast<const vfloat*>(p); }

inline void StoreVector(float* p, vfloat v) { *reinterpret_cast<vfloat*>(p) = v; }

// bfloat16 values travel as their bits (XLA's FFI hands them over as uint16_t): the upper
// half of a float32's. Loading widens them exactly; storing rounds to nearest, ties to
// even, as XLA's conversion does, and keeps NaN a NaN.
using vbf16 = uint16_t __attribute__((vector_size(2 * kLanes), aligned(2), may_alias));

inline vfloat LoadVector(const uint16_t* p) {
  return (vfloat)(__builtin_convertvector(*reinterpret_cast<const vbf16*>(p), vint) << 16);
}

inline void StoreVector(uint16_t* p, vfloat v) {
  using vuint = uint32_t __attribute__((vector_size(4 * kLanes)));
  const vuint bits = (vuint)v;
  const vuint rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
  const vuint quiet_nan = (bits >> 16) | 0x40;
  *reinterpret_cast<vbf16*>(p) = __builtin_convertvector(v != v ? quiet_nan : rounded, vbf16);
}

inline float Bf16ToFloat(uint16_t bits) {
  uint32_t wide = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

inline float ToFloat(float value) { return value; }
inline float ToFloat(uint16_t bits) { return Bf16ToFloat(bits); }

inline uint16_t FloatToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (value != value) return uint16_t((bits >> 16) | 0x40);
  return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

inline int64_t NumWorkers(ffi::ThreadPool& pool, int64_t tasks) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), tasks));
}

// $RESNET_JAX_KERNEL_DELAY_MS, read once when the library loads: tests set it to make
// every kernel call that many milliseconds slow on purpose (0, the default, adds nothing).
inline const int kKernelDelayMs = [] {
  const char* value = std::getenv("RESNET_JAX_KERNEL_DELAY_MS");
  return value == nullptr ? 0 : std::max(0, std::atoi(value));
}();

// Runs body(task) for every task in [0, tasks) on up to `workers` threads: this one and
// helpers offered to the pool. The caller never waits for a helper that has not started:
// the pool's threads may all be busy (XLA runs independent operations side by side, this
// one included), and then the caller does every task itself. A helper that starts late
// finds no task left and touches nothing but `state`.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t tasks, int64_t workers, F body) {
  if (kKernelDelayMs > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(kKernelDelayMs));
  }
  struct State {
    std::atomic<int64_t> next_task{0};
    std::mutex mu;
    std::condition_variable cv;
    int64_t active = 0;  // helpers that may be running a task; guarded by mu
  };
  auto state = std::make_shared<State>();
  for (int64_t i = 1; i < workers; ++i) {
    pool.Schedule([state, tasks, &body] {
      {
        std::lock_guard<std::mutex> lock(state->mu);
        ++state->active;
      }
      for (int64_t t; (t = state->next_task.fetch_add(1)) < tasks;) body(t);
      std::lock_guard<std::mutex> lock(state->mu);
      --state->active;
      state->cv.notify_all();
    });
  }
  for (int64_t t; (t = state->next_task.fetch_add(1)) < tasks;) body(t);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->active == 0; });
}

}  // namespace resnet_jax

#endif  // RESNET_JAX_KERNELS_PARALLEL_H_
