// hmfusion's register-tiled kernel: the fused operator for small factors, with its own loops.
//
// For small A and B (the main job's 8×8 and 8×48, a 4×4 A beside a 64×64 B) the BLAS calls of
// kron_concat.cpp spend more time in dispatch, allocation and skinny-GEMM set-up than in
// arithmetic. Here every contraction of a chunk runs in plain loops over register tiles
// (GCC/Clang vector extensions, L values per tile row in one or two registers), on staging
// buffers of the accumulation type F (float for float/bfloat16/half, double for double), so
// 16-bit inputs are converted once on load and their outputs rounded once on store. No ATen op
// runs inside the parallel region.
//
// Conventions: a "B operand" row is read a whole vector (L values) at a time, so it may run past
// the row's end into the next row or the buffer's slack; what that computes lands only in padding
// columns of the result, which are never read. Every buffer has `kSlack` spare values at its end.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace hmfusion_tiled {

template <typename F, int L>
struct Vec {
  typedef F type __attribute__((vector_size(sizeof(F) * L)));
};

constexpr int64_t kSlack = 64;  // ≥ the widest vector (16 floats, 8 doubles), in values

inline int64_t round_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }

// The widest vector the target's registers hold: a 64-byte vector type on an AVX2 target is
// lowered by GCC through memory, 7× slower than two 32-byte ones (measured on an AVX2 EPYC:
// 3.6 against 26-39 GMAC/s for a (96 × 32) · (32 × 32) product on one core).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

// C (+)= A B for one tile of MR rows and L columns, each row held in NV registers of VL lanes:
// A(i, k) = a[i*rsa + k*csa], B(k, :) = b[k*ldb .. +L], C(i, :) = c[i*ldc .. +L].
template <typename F, int MR, int L>
inline __attribute__((always_inline)) void tile(int64_t K, const F* __restrict a, int64_t rsa,
                                                int64_t csa, const F* __restrict b, int64_t ldb,
                                                F* __restrict c, int64_t ldc, bool accumulate) {
  constexpr int VL = std::min<int>(L, kVectorBytes / static_cast<int>(sizeof(F)));
  constexpr int NV = L / VL;
  typedef typename Vec<F, VL>::type V;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) {
      if (accumulate) {
        std::memcpy(&acc[i][v], c + i * ldc + v * VL, sizeof(V));
      } else {
        acc[i][v] = V{};
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V bk[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bk[v], b + k * ldb + v * VL, sizeof(V));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const F aik = a[i * rsa + k * csa];
      for (int v = 0; v < NV; ++v) acc[i][v] += aik * bk[v];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) std::memcpy(c + i * ldc + v * VL, &acc[i][v], sizeof(V));
  }
}

template <typename F, int L>
void gemm_lanes(int64_t M, int64_t N, int64_t K, const F* a, int64_t rsa, int64_t csa,
                const F* b, int64_t ldb, F* c, int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < N; j += L) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) {
      tile<F, 6, L>(K, a + i * rsa, rsa, csa, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    }
    if (i + 4 <= M) {
      tile<F, 4, L>(K, a + i * rsa, rsa, csa, b + j, ldb, c + i * ldc + j, ldc, accumulate);
      i += 4;
    }
    if (i + 2 <= M) {
      tile<F, 2, L>(K, a + i * rsa, rsa, csa, b + j, ldb, c + i * ldc + j, ldc, accumulate);
      i += 2;
    }
    if (i < M) tile<F, 1, L>(K, a + i * rsa, rsa, csa, b + j, ldb, c + i * ldc + j, ldc, accumulate);
  }
}

// C (M × N, row pitch ldc) (+)= A (M × K, strides rsa, csa) · B (K × N, row pitch ldb).
// Columns are computed a vector at a time: C's row pitch must leave room for N rounded up to the
// vector width (those extra columns receive garbage), and B's rows may be over-read likewise.
template <typename F>
void gemm(int64_t M, int64_t N, int64_t K, const F* a, int64_t rsa, int64_t csa, const F* b,
          int64_t ldb, F* c, int64_t ldc, bool accumulate) {
  constexpr int L = 64 / sizeof(F);  // 16 floats or 8 doubles: one or two registers a tile row
  if (N <= L / 2) {
    gemm_lanes<F, L / 2>(M, N, K, a, rsa, csa, b, ldb, c, ldc, accumulate);
  } else {
    gemm_lanes<F, L>(M, N, K, a, rsa, csa, b, ldb, c, ldc, accumulate);
  }
}

// The width that gemm writes for N columns (its C must have this row pitch at least).
template <typename F>
int64_t padded(int64_t N) {
  constexpr int L = 64 / sizeof(F);
  return round_up(N, N <= L / 2 ? L / 2 : L);
}

// dst (cols × rows, row pitch ldd) = src (rows × cols, row pitch lds)ᵀ.
template <typename F>
void transpose(int64_t rows, int64_t cols, const F* __restrict src, int64_t lds,
               F* __restrict dst, int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
  }
}

// Conversions between the inputs' type T and F, one row at a time. bfloat16 is converted by
// its bits (a shift up; round to nearest even down, NaN kept quiet), which the compiler
// vectorises: c10's scalar conversions cost ~1 ns a value, a third of a small layer's time.
template <typename T, typename F>
inline void load_row(const T* __restrict src, F* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<F>(src[j]);
}
template <typename T, typename F>
inline void store_row(const F* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}
template <>
inline void load_row<c10::BFloat16, float>(const c10::BFloat16* __restrict src,
                                           float* __restrict dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = static_cast<uint32_t>(bits[j]) << 16;
    std::memcpy(dst + j, &u, sizeof(float));
  }
}
template <>
inline void store_row<c10::BFloat16, float>(const float* __restrict src,
                                            c10::BFloat16* __restrict dst, int64_t n) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, src + j, sizeof(float));
    const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    bits[j] = static_cast<uint16_t>(((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc00000u : rounded) >> 16);
  }
}

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// A worker's buffer of F values, allocated on first use and kept for the call. `get` leaves it
// uninitialised (scratch: what over-reads find there lands only in padding columns); `zeros`
// zero-fills it when it is allocated (accumulators).
template <typename F>
struct Buffer {
  std::unique_ptr<F[]> data;
  int64_t size = 0;
  F* get(int64_t n) {
    if (size < n + kSlack) {
      data.reset(new F[n + kSlack]);
      size = n + kSlack;
    }
    return data.get();
  }
  F* zeros(int64_t n) {
    if (size < n + kSlack) {
      get(n);
      std::fill(data.get(), data.get() + size, F(0));
    }
    return data.get();
  }
};

// The call's factors in F: A_k (p × q) as is; B_k (s × t) with rows padded to Tp, and B_kᵀ
// (t × s) with rows padded to Sp (zero padding).
template <typename F>
struct Factors {
  int64_t terms, p, q, s, t, Sp, Tp;
  std::vector<F> a, b, bt;

  template <typename T>
  Factors(const T* pa, const T* pb, int64_t terms_, int64_t p_, int64_t q_, int64_t s_,
          int64_t t_)
      : terms(terms_), p(p_), q(q_), s(s_), t(t_), Sp(padded<F>(s_)), Tp(padded<F>(t_)) {
    a.assign(terms * p * q + kSlack, F(0));
    b.assign(terms * s * Tp + kSlack, F(0));
    bt.assign(terms * t * Sp + kSlack, F(0));
    for (int64_t i = 0; i < terms * p * q; ++i) a[i] = static_cast<F>(pa[i]);
    for (int64_t k = 0; k < terms; ++k) {
      for (int64_t i = 0; i < s; ++i) {
        for (int64_t j = 0; j < t; ++j) {
          const F v = static_cast<F>(pb[(k * s + i) * t + j]);
          b[(k * s + i) * Tp + j] = v;
          bt[(k * t + j) * Sp + i] = v;
        }
      }
    }
  }
  const F* A(int64_t k) const { return a.data() + k * p * q; }
  const F* B(int64_t k) const { return b.data() + k * s * Tp; }
  const F* Bt(int64_t k) const { return bt.data() + k * t * Sp; }
};

// Rows r0 … r0+c-1 of the k inputs, converted to F, as (c, q·t) with zero padding columns.
template <typename T, typename F>
void gather(const std::vector<at::Tensor>& xs, int64_t r0, int64_t c, int64_t width, F* out) {
  int64_t offset = 0;
  for (const auto& x : xs) {
    const int64_t n = x.size(1), stride = x.stride(0);
    const T* base = x.data_ptr<T>() + r0 * stride;
    for (int64_t r = 0; r < c; ++r) {
      load_row<T, F>(base + r * stride, out + r * width + offset, n);
    }
    offset += n;
  }
  if (offset < width) {
    for (int64_t r = 0; r < c; ++r) std::fill(out + r * width + offset, out + (r + 1) * width, F(0));
  }
}

// dst (`rows` rows of `n` values, row pitch ldd, type T) ← src (`rows` rows of pitch `pitch`,
// type F): drops the padding columns of a result.
template <typename T, typename F>
void store_blocks(const F* src, int64_t pitch, int64_t rows, int64_t n, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) store_row<T, F>(src + r * pitch, dst + r * ldd, n);
}

// Rows of a (c, width) F buffer back into the k outputs (their columns in order), as T.
template <typename T, typename F>
void scatter(const F* src, int64_t width, std::vector<at::Tensor>& outs, int64_t r0, int64_t c) {
  int64_t offset = 0;
  for (auto& out : outs) {
    const int64_t n = out.size(1);
    T* base = out.data_ptr<T>() + r0 * n;
    for (int64_t r = 0; r < c; ++r) store_row<T, F>(src + r * width + offset, base + r * n, n);
    offset += n;
  }
}

}  // namespace hmfusion_tiled
