// Intel AMX tiles for the bfloat16 convolutions: eight tile registers of up to 16 rows of 64
// bytes, and TDPBF16PS, which adds to a 16x16 float32 tile C the products of A (16 rows of
// 16 bfloat16 pairs) and B (16 rows of pairs laid out as vdpbf16ps reads them). One
// instruction is 8,192 multiply-adds.
//
// Linux hands a process the 8 KiB of tile state only once it asks (arch_prctl); where it
// refuses (an older kernel) the convolutions keep to vdpbf16ps. The tile instructions are
// written as inline assembly with the tile numbers as template arguments: the compiler's
// intrinsics paste their tile arguments into the assembly text, so they take only literal
// digits.

#ifndef RESNET_JAX_AMX_H_
#define RESNET_JAX_AMX_H_

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define RESNET_JAX_AMX 1

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace resnet_jax::amx {

// Whether this process may use the tiles (asked once) and has not been told not to
// (`resnet_kernels_set_amx(0)`, for tests and benchmarks that compare the two paths).
inline std::atomic<bool> enabled{true};

inline bool Permitted() {
  static const bool permitted = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}

inline bool Usable() { return enabled.load(std::memory_order_relaxed) && Permitted(); }

// The 64-byte operand of LDTILECFG: palette 1, then per tile its bytes per row and rows.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};

  void Set(int tile, int rows_, int bytes_per_row) {
    rows[tile] = static_cast<uint8_t>(rows_);
    colsb[tile] = static_cast<uint16_t>(bytes_per_row);
  }
  // Loads this shape of tiles on the calling thread (every tile is zeroed).
  void Load() const { _tile_loadconfig(this); }
};

template <int T>
inline void Zero() {
  asm volatile("tilezero %%tmm%c0" ::"n"(T));
}

template <int T>
inline void Load(const void* base, int64_t stride_bytes) {
  asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride_bytes), "n"(T)
               : "memory");
}

template <int T>
inline void Store(void* base, int64_t stride_bytes) {
  asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride_bytes), "n"(T)
               : "memory");
}

// C += A * B.
template <int C, int A, int B>
inline void Dot() {
  asm volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"n"(C), "n"(A), "n"(B));
}

}  // namespace resnet_jax::amx

#endif
#endif  // RESNET_JAX_AMX_H_
