// hmfusion's native CPU operator: Y = cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ and its backward, W never formed.
//
// One parallel region per call. The rows are cut into chunks of `chunk_rows`; the workers of
// that region take chunks from a shared atomic counter (dynamic scheduling: a descheduled
// thread delays only the chunk it holds, not a static share of the rows) and run
// single-threaded GEMMs on cache-resident blocks. For a row x viewed as X (q×t):
//   right first:  Z = X Bᵀ (one GEMM over the chunk),  Y = A Z (batched, A broadcast);
//   left first:   U = A X (batched),                   Y = U Bᵀ (one GEMM).
// Right first with a small B (s, t < kTransposedMaxS), the batched product would be c GEMMs
// of s columns each; it runs transposed instead, as one GEMM over the chunk: Zᵀ (c·s, q) Aᵀ,
// with B's products as plain loops writing Zᵀ and reading Gᵀ (p = q = 512, s = t = 2: per-row
// GEMMs of 2 columns ran forward+backward in 1.8 s at m = 4096, D = 1024, the two-matmul code
// in 0.11 s).
// The backward recomputes Z (or U) per chunk; dA and dB are accumulated per worker and reduced
// once at the end. Registered with the dispatcher as hmfusion_native::{forward, backward} (and
// their register-tiled twins); hmfusion_native::kron_concat ties a forward and its backward
// together with a C++ autograd node, the eager path of hmfusion/ops/native.py (fake tensors,
// vmap and the torch.compile / torch.func path are registered from Python there).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "tiled.h"

#include <algorithm>
#include <atomic>
#include <vector>

namespace {

using at::Tensor;

// Right first with B smaller than this both ways runs A's product transposed (see the top).
constexpr int64_t kTransposedMaxS = 16;

struct Geometry {
  int64_t m, p, q, s, t, terms, chunk;
  bool left_first;

  bool transposed() const { return !left_first && s < kTransposedMaxS && t < kTransposedMaxS; }

  // Scratch values per row of a chunk: the intermediate (U or Z), or, transposed, Zᵀ (or Gᵀ)
  // and Yᵀ (or dYᵀ).
  int64_t scratch_per_row() const {
    return left_first ? p * t : transposed() ? s * (q + p) : q * s;
  }
};

Geometry geometry(const std::vector<Tensor>& xs, const Tensor& a, const Tensor& b,
                  bool left_first, int64_t chunk_rows) {
  TORCH_CHECK(!xs.empty(), "hmfusion_native: need at least one input");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(0) > 0,
              "hmfusion_native: a and b must be (terms, p, q) and (terms, s, t) stacks, terms ≥ 1");
  TORCH_CHECK(chunk_rows > 0, "hmfusion_native: chunk_rows must be positive");
  Geometry g{xs[0].size(0), a.size(1), a.size(2), b.size(1), b.size(2), a.size(0),
             chunk_rows, left_first};
  int64_t width = 0;
  for (const auto& x : xs) {
    TORCH_CHECK(x.dim() == 2 && x.size(0) == g.m, "hmfusion_native: inputs must be (m, n_i)");
    TORCH_CHECK(x.scalar_type() == a.scalar_type() && x.device().is_cpu(),
                "hmfusion_native: inputs and factors must share one dtype, on the CPU");
    width += x.size(1);
  }
  TORCH_CHECK(width <= g.q * g.t, "hmfusion_native: inputs wider than q·t");
  return g;
}

// The transposed path's small-B products, plain loops (s, t < kTransposedMaxS: a BLAS GEMM with
// two dimensions this small spends its time packing; at p = q = 512, s = t = 2 MKL's small-GEMM
// path took a quarter of forward+backward). Accumulation in float (double for double).
template <typename T>
void b_rows_transposed_impl(const T* x, const T* b, T* zt, int64_t c, int64_t q, int64_t s,
                            int64_t t) {
  using F = typename hmfusion_tiled::Acc<T>::type;
  for (int64_t r = 0; r < c; ++r) {
    const T* xr = x + r * q * t;
    T* zr = zt + r * s * q;
    for (int64_t i = 0; i < s; ++i) {
      const T* bi = b + i * t;
      for (int64_t j = 0; j < q; ++j) {
        F acc = 0;
        for (int64_t l = 0; l < t; ++l) acc += F(bi[l]) * F(xr[j * t + l]);
        zr[i * q + j] = T(acc);
      }
    }
  }
}

// Zᵀ (c, s, q) with Zᵀ_r = B X_rᵀ, for the chunk's rows x3 (c, q, t).
void b_rows_transposed(const Tensor& x3, const Tensor& b_k, Tensor& zt) {
  const int64_t c = x3.size(0), q = x3.size(1), t = x3.size(2), s = b_k.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x3.scalar_type(), "b_rows", [&] {
    b_rows_transposed_impl<scalar_t>(x3.const_data_ptr<scalar_t>(), b_k.const_data_ptr<scalar_t>(),
                                     zt.data_ptr<scalar_t>(), c, q, s, t);
  });
}

template <typename T>
void b_grads_transposed_impl(const T* gt, const T* x, const T* b, T* dx, bool accumulate,
                             double* db, int64_t c, int64_t q, int64_t s, int64_t t) {
  using F = typename hmfusion_tiled::Acc<T>::type;
  for (int64_t r = 0; r < c; ++r) {
    const T* gr = gt + r * s * q;
    const T* xr = x + r * q * t;
    for (int64_t j = 0; j < q; ++j) {
      for (int64_t l = 0; l < t; ++l) {
        if (dx) {  // dX_r[j, l] = Σ_i Gᵀ_r[i, j] B[i, l]
          F acc = accumulate ? F(dx[(r * q + j) * t + l]) : F(0);
          for (int64_t i = 0; i < s; ++i) acc += F(gr[i * q + j]) * F(b[i * t + l]);
          dx[(r * q + j) * t + l] = T(acc);
        }
        if (db) {  // dB[i, l] += Σ_{r, j} Gᵀ_r[i, j] X_r[j, l]
          const F xv = F(xr[j * t + l]);
          for (int64_t i = 0; i < s; ++i) db[i * t + l] += double(F(gr[i * q + j]) * xv);
        }
      }
    }
  }
}

// dX (c, q, t) (+)= G B and dB += Σ Gᵀ X from Gᵀ (c, s, q); `db` holds s·t doubles.
void b_grads_transposed(const Tensor& gt, const Tensor& x3, const Tensor& b_k, Tensor* dx3,
                        bool accumulate, double* db) {
  const int64_t c = x3.size(0), q = x3.size(1), t = x3.size(2), s = b_k.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x3.scalar_type(), "b_grads", [&] {
    b_grads_transposed_impl<scalar_t>(
        gt.const_data_ptr<scalar_t>(), x3.const_data_ptr<scalar_t>(),
        b_k.const_data_ptr<scalar_t>(), dx3 ? dx3->data_ptr<scalar_t>() : nullptr, accumulate,
        db, c, q, s, t);
  });
}

// Runs body(worker, chunk) for every chunk inside one parallel region, chunks handed out by an
// atomic counter. Returns the number of workers used (each owns accumulator slot `worker`).
template <typename Body>
int64_t for_each_chunk(int64_t chunks, int64_t workers, const Body& body) {
  if (workers <= 1 || chunks <= 1) {
    // small work: no parallel region at all (ATen's own loops run single-threaded too, so no
    // thread waits at a barrier for a descheduled one)
    c10::ParallelGuard single_threaded(true);
    for (int64_t c = 0; c < chunks; ++c) body(0, c);
    return 1;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    // The caller sits below autograd; worker threads start from default thread-local state.
    at::AutoDispatchBelowADInplaceOrView guard;
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) body(w, c);
    }
  });
  return workers;
}

int64_t worker_count(int64_t chunks) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunks));
}

// Rows with unit column stride (the kernels read each input row as one run of values).
std::vector<Tensor> contiguous_rows(const std::vector<Tensor>& xs_in) {
  std::vector<Tensor> xs;
  for (const auto& x : xs_in) xs.push_back(x.stride(-1) == 1 ? x : x.contiguous());
  return xs;
}

// The backward's outputs: dX_i (m × n_i) uninitialised, dA and dB zeroed (empty when not
// needed). True when there is nothing to compute (no rows or no gradient), dX then zeroed.
bool allocate_grads(const std::vector<Tensor>& xs, const Tensor& a, const Tensor& b,
                    const Geometry& g, bool need_x, bool need_a, bool need_b,
                    std::vector<Tensor>& dxs, Tensor& da, Tensor& db) {
  const auto options = xs[0].options();
  if (need_x) {
    for (const auto& x : xs) dxs.push_back(at::empty({g.m, x.size(1)}, options));
  }
  da = need_a ? at::zeros_like(a) : at::empty({0}, options);
  db = need_b ? at::zeros_like(b) : at::empty({0}, options);
  if (g.m == 0 || !(need_x || need_a || need_b)) {
    for (auto& dx : dxs) dx.zero_();
    return true;
  }
  return false;
}

// The chunk's rows of the k inputs as (c, q, t): a view when there is one unpadded input,
// else copied into the worker's staging buffer (its padding columns zeroed once).
struct Rows {
  const std::vector<Tensor>& xs;
  int64_t q, t, capacity;  // capacity: rows per chunk
  bool direct;

  Rows(const std::vector<Tensor>& inputs, int64_t q_, int64_t t_, int64_t capacity_)
      : xs(inputs), q(q_), t(t_), capacity(capacity_),
        direct(inputs.size() == 1 && inputs[0].size(1) == q_ * t_ && inputs[0].is_contiguous()) {}

  Tensor staging(int64_t rows) const {
    int64_t width = 0;
    for (const auto& x : xs) width += x.size(1);
    // the padding columns are zeroed once; the inputs' columns are overwritten per chunk
    return width == q * t ? at::empty({rows, q * t}, xs[0].options())
                          : at::zeros({rows, q * t}, xs[0].options());
  }

  Tensor read(int64_t r0, int64_t c, Tensor& stage) const {
    if (direct) return xs[0].narrow(0, r0, c).view({c, q, t});
    if (!stage.defined()) stage = staging(capacity);
    Tensor buffer = stage.narrow(0, 0, c);
    std::vector<Tensor> pieces;
    pieces.reserve(xs.size());
    int64_t width = 0;
    for (const auto& x : xs) {
      pieces.push_back(c == x.size(0) ? x : x.narrow(0, r0, c));
      width += x.size(1);
    }
    if (width == q * t) {
      at::cat_out(buffer, pieces, 1);  // one copy kernel for the k inputs
    } else {
      int64_t offset = 0;
      for (const auto& piece : pieces) {
        buffer.narrow(1, offset, piece.size(1)).copy_(piece);
        offset += piece.size(1);
      }
    }
    return buffer.view({c, q, t});
  }
};

Tensor forward(const std::vector<Tensor>& xs_in, const Tensor& a_in, const Tensor& b_in,
               bool left_first, int64_t chunk_rows) {
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const std::vector<Tensor> xs = contiguous_rows(xs_in);
  const Geometry g = geometry(xs, a, b, left_first, chunk_rows);
  Tensor y = at::empty({g.m, g.p * g.s}, xs[0].options());
  if (g.m == 0) return y;
  const Rows rows(xs, g.q, g.t, std::min(g.chunk, g.m));
  const int64_t chunks = (g.m + g.chunk - 1) / g.chunk;
  const int64_t workers = worker_count(chunks);
  std::vector<Tensor> stage(workers), scratch(workers);
  std::vector<Tensor> b_t, a_terms;
  for (int64_t k = 0; k < g.terms; ++k) {
    b_t.push_back(b[k].t());
    a_terms.push_back(a[k]);
  }
  const bool transposed = g.transposed();
  for_each_chunk(chunks, workers, [&](int64_t w, int64_t chunk) {
    const int64_t r0 = chunk * g.chunk, c = std::min(g.chunk, g.m - r0);
    Tensor x3 = rows.read(r0, c, stage[w]);
    Tensor y3 = y.narrow(0, r0, c).view({c, g.p, g.s});
    const int64_t inner = g.scratch_per_row();
    if (!scratch[w].defined()) {
      scratch[w] = at::empty({std::min(g.chunk, g.m) * inner}, y.options());
    }
    if (transposed) {  // Yᵀ = Σ_τ Zᵀ Aᵀ over the chunk's c·s rows; s = 1 writes Y directly
      Tensor zt = scratch[w].narrow(0, 0, c * g.s * g.q).view({c, g.s, g.q});
      Tensor zt2 = zt.view({c * g.s, g.q});
      Tensor yt = g.s == 1 ? y3.view({c, g.p})
                           : scratch[w].narrow(0, c * g.s * g.q, c * g.s * g.p).view({c * g.s, g.p});
      for (int64_t k = 0; k < g.terms; ++k) {
        b_rows_transposed(x3, b[k], zt);
        if (k == 0) at::mm_out(yt, zt2, a_terms[k].t()); else yt.addmm_(zt2, a_terms[k].t());
      }
      if (g.s > 1) y3.copy_(yt.view({c, g.s, g.p}).transpose(1, 2));
      return;
    }
    for (int64_t k = 0; k < g.terms; ++k) {
      Tensor a_rows = a_terms[k].expand({c, g.p, g.q});
      if (!left_first) {
        Tensor z = scratch[w].narrow(0, 0, c * inner).view({c * g.q, g.s});
        at::mm_out(z, x3.view({c * g.q, g.t}), b_t[k]);
        Tensor z3 = z.view({c, g.q, g.s});
        if (k == 0) at::bmm_out(y3, a_rows, z3); else y3.baddbmm_(a_rows, z3);
      } else {
        Tensor u3 = scratch[w].narrow(0, 0, c * inner).view({c, g.p, g.t});
        at::bmm_out(u3, a_rows, x3);
        Tensor y2 = y3.view({c * g.p, g.s});
        if (k == 0) at::mm_out(y2, u3.view({c * g.p, g.t}), b_t[k]);
        else y2.addmm_(u3.view({c * g.p, g.t}), b_t[k]);
      }
    }
  });
  return y;
}

// Σ over the chunk's rows of g3[r] z3[r]ᵀ, for g3 (c, r, k) and z3 (c, cols, k): per-row
// products accumulated in a (chunk, r, cols) buffer (summed once at the end), or, when that
// buffer would outgrow the chunk, one GEMM over rows transposed to (r, c·k) and (cols, c·k).
struct MiddleGrad {
  bool per_row;
  int64_t rows, cols;

  MiddleGrad(int64_t r, int64_t cols_, int64_t k) : per_row(r * cols_ <= (r + cols_) * k),
                                                    rows(r), cols(cols_) {}

  Tensor make(int64_t chunk, const at::TensorOptions& options) const {
    return per_row ? at::zeros({chunk, rows, cols}, options) : at::zeros({rows, cols}, options);
  }

  void add(Tensor& acc, const Tensor& g3, const Tensor& z3) const {
    const int64_t c = g3.size(0), k = g3.size(2);
    if (per_row) {
      acc.narrow(0, 0, c).baddbmm_(g3, z3.transpose(1, 2));
    } else {
      Tensor g2 = g3.transpose(0, 1).reshape({rows, c * k});
      Tensor z2 = z3.transpose(0, 1).reshape({cols, c * k});
      acc.addmm_(g2, z2.t());
    }
  }

  Tensor total(const Tensor& acc) const { return per_row ? acc.sum(0) : acc; }
};

std::tuple<std::vector<Tensor>, Tensor, Tensor> backward(
    const Tensor& gy_in, const std::vector<Tensor>& xs_in, const Tensor& a_in,
    const Tensor& b_in, bool left_first, int64_t chunk_rows, bool need_x, bool need_a,
    bool need_b) {
  const Tensor a = a_in.contiguous(), b = b_in.contiguous(), gy = gy_in.contiguous();
  const std::vector<Tensor> xs = contiguous_rows(xs_in);
  const Geometry g = geometry(xs, a, b, left_first, chunk_rows);
  const auto options = xs[0].options();
  std::vector<Tensor> dxs;
  Tensor da, db;
  if (allocate_grads(xs, a, b, g, need_x, need_a, need_b, dxs, da, db)) return {dxs, da, db};
  const Rows rows(xs, g.q, g.t, std::min(g.chunk, g.m));
  const int64_t chunks = (g.m + g.chunk - 1) / g.chunk;
  const int64_t workers = worker_count(chunks);
  const int64_t chunk = std::min(g.chunk, g.m);
  // dA's row sum: right first Σ dY_r Z_rᵀ (p, s)(s, q); left first Σ V_r X_rᵀ (p, t)(t, q).
  const MiddleGrad middle(g.p, g.q, left_first ? g.t : g.s);
  std::vector<std::vector<Tensor>> da_acc(workers), db_acc(workers);
  std::vector<Tensor> stage(workers), dx_stage(workers), scratch(workers);
  const bool transposed = g.transposed();
  const int64_t inner = g.scratch_per_row();
  for_each_chunk(chunks, workers, [&](int64_t w, int64_t index) {
    const int64_t r0 = index * g.chunk, c = std::min(g.chunk, g.m - r0);
    if (!scratch[w].defined()) {  // the worker's first chunk: its accumulators and scratch
      for (int64_t k = 0; k < g.terms; ++k) {
        if (need_a && transposed) da_acc[w].push_back(at::zeros({g.p, g.q}, options));
        else if (need_a) da_acc[w].push_back(middle.make(chunk, options));
        if (need_b) db_acc[w].push_back(at::zeros({g.s, g.t}, options));
      }
      scratch[w] = at::empty({chunk * inner}, options);
    }
    Tensor x3 = rows.read(r0, c, stage[w]);
    Tensor x2 = x3.view({c * g.q, g.t});
    Tensor g3 = gy.narrow(0, r0, c).view({c, g.p, g.s});
    Tensor g2 = g3.view({c * g.p, g.s});
    Tensor dx3;
    if (need_x) {
      if (rows.direct) {
        dx3 = dxs[0].narrow(0, r0, c).view({c, g.q, g.t});
      } else {
        if (!dx_stage[w].defined()) dx_stage[w] = at::empty({chunk, g.q * g.t}, options);
        dx3 = dx_stage[w].narrow(0, 0, c).view({c, g.q, g.t});
      }
    }
    Tensor work = scratch[w].narrow(0, 0, c * inner);
    // transposed: dYᵀ (c·s, p) once per chunk, then per term dA += dYᵀᵀ Zᵀ and Gᵀ = dYᵀ A
    Tensor gt2, zt3;
    std::vector<double> db_chunk;
    if (transposed) {
      zt3 = work.narrow(0, 0, c * g.s * g.q).view({c, g.s, g.q});
      if (g.s == 1) {
        gt2 = g3.view({c, g.p});
      } else {
        gt2 = work.narrow(0, c * g.s * g.q, c * g.s * g.p).view({c * g.s, g.p});
        gt2.view({c, g.s, g.p}).copy_(g3.transpose(1, 2));
      }
      if (need_b) db_chunk.resize(g.s * g.t);
    }
    for (int64_t k = 0; k < g.terms; ++k) {
      const Tensor a_k = a[k], b_k = b[k];
      if (transposed) {  // as below, with A's products as GEMMs over the c·s rows of Zᵀ, Gᵀ
        Tensor zt2 = zt3.view({c * g.s, g.q});
        if (need_a) {
          b_rows_transposed(x3, b_k, zt3);
          da_acc[w][k].addmm_(gt2.t(), zt2);
        }
        if (need_x || need_b) {
          at::mm_out(zt2, gt2, a_k);  // Gᵀ
          std::fill(db_chunk.begin(), db_chunk.end(), 0.0);
          b_grads_transposed(zt3, x3, b_k, need_x ? &dx3 : nullptr, k > 0,
                             need_b ? db_chunk.data() : nullptr);
          if (need_b) {
            db_acc[w][k].add_(at::from_blob(db_chunk.data(), {g.s, g.t}, at::kDouble));
          }
        }
      } else if (!left_first) {  // Y = A Z, Z = X Bᵀ:  G = Aᵀ dY, dA = Σ dY Zᵀ, dB = Σ Gᵀ X, dX = G B
        if (need_a) {
          Tensor z2 = work.view({c * g.q, g.s});
          at::mm_out(z2, x2, b_k.t());
          middle.add(da_acc[w][k], g3, z2.view({c, g.q, g.s}));
        }
        if (need_x || need_b) {
          Tensor gq3 = work.view({c, g.q, g.s});
          at::bmm_out(gq3, a_k.t().expand({c, g.q, g.p}), g3);
          Tensor gq2 = gq3.view({c * g.q, g.s});
          if (need_b) db_acc[w][k].addmm_(gq2.t(), x2);
          if (need_x) {
            Tensor dx2 = dx3.view({c * g.q, g.t});
            if (k == 0) at::mm_out(dx2, gq2, b_k); else dx2.addmm_(gq2, b_k);
          }
        }
      } else {  // Y = U Bᵀ, U = A X:  V = dY B, dA = Σ V Xᵀ, dB = Σ dYᵀ U, dX = Aᵀ V
        if (need_b) {
          Tensor u3 = work.view({c, g.p, g.t});
          at::bmm_out(u3, a_k.expand({c, g.p, g.q}), x3);
          db_acc[w][k].addmm_(g2.t(), u3.view({c * g.p, g.t}));
        }
        if (need_a || need_x) {
          Tensor v3 = work.view({c, g.p, g.t});
          Tensor v2 = v3.view({c * g.p, g.t});
          at::mm_out(v2, g2, b_k);
          if (need_a) middle.add(da_acc[w][k], v3, x3);
          if (need_x) {
            Tensor at_rows = a_k.t().expand({c, g.q, g.p});
            if (k == 0) at::bmm_out(dx3, at_rows, v3); else dx3.baddbmm_(at_rows, v3);
          }
        }
      }
    }
    if (need_x && !rows.direct) {
      int64_t offset = 0;
      for (size_t i = 0; i < xs.size(); ++i) {
        const int64_t width = xs[i].size(1);
        dxs[i].narrow(0, r0, c).copy_(dx_stage[w].narrow(0, 0, c).narrow(1, offset, width));
        offset += width;
      }
    }
  });
  for (int64_t w = 0; w < workers; ++w) {
    for (int64_t k = 0; k < static_cast<int64_t>(da_acc[w].size()); ++k) {
      da[k].add_(transposed ? da_acc[w][k] : middle.total(da_acc[w][k]));
    }
    for (int64_t k = 0; k < static_cast<int64_t>(db_acc[w].size()); ++k) db[k].add_(db_acc[w][k]);
  }
  return {dxs, da, db};
}

// The register-tiled kernel (tiled.h): the same contractions as forward/backward above, per chunk
// on F staging buffers, for small factors.
namespace tiled = hmfusion_tiled;

template <typename T>
Tensor tiled_forward_impl(const std::vector<Tensor>& xs, const Tensor& a, const Tensor& b,
                          const Geometry& g) {
  using F = typename tiled::Acc<T>::type;
  Tensor y = at::empty({g.m, g.p * g.s}, xs[0].options());
  if (g.m == 0) return y;
  const tiled::Factors<F> f(a.data_ptr<T>(), b.data_ptr<T>(), g.terms, g.p, g.q, g.s, g.t);
  const int64_t chunk = std::min(g.chunk, g.m), chunks = (g.m + g.chunk - 1) / g.chunk;
  const int64_t workers = worker_count(chunks), width = g.q * g.t;
  const int64_t inner = std::max(g.q * f.Sp, g.p * f.Tp);
  std::vector<tiled::Buffer<F>> xbuf(workers), work(workers), ybuf(workers);
  T* out = y.data_ptr<T>();
  for_each_chunk(chunks, workers, [&](int64_t w, int64_t index) {
    const int64_t r0 = index * g.chunk, c = std::min(g.chunk, g.m - r0);
    F* x = xbuf[w].get(chunk * width);
    F* z = work[w].get(chunk * inner);
    F* yw = ybuf[w].get(chunk * g.p * f.Sp);
    tiled::gather<T, F>(xs, r0, c, width, x);
    for (int64_t k = 0; k < g.terms; ++k) {
      const bool acc = k > 0;
      if (!g.left_first) {  // Z = X Bᵀ (one GEMM over the chunk), Y_r = A Z_r
        tiled::gemm<F>(c * g.q, g.s, g.t, x, g.t, 1, f.Bt(k), f.Sp, z, f.Sp, false);
        for (int64_t r = 0; r < c; ++r) {
          tiled::gemm<F>(g.p, g.s, g.q, f.A(k), g.q, 1, z + r * g.q * f.Sp, f.Sp,
                         yw + r * g.p * f.Sp, f.Sp, acc);
        }
      } else {  // U_r = A X_r, Y = U Bᵀ
        for (int64_t r = 0; r < c; ++r) {
          tiled::gemm<F>(g.p, g.t, g.q, f.A(k), g.q, 1, x + r * width, g.t,
                         z + r * g.p * f.Tp, f.Tp, false);
        }
        tiled::gemm<F>(c * g.p, g.s, g.t, z, f.Tp, 1, f.Bt(k), f.Sp, yw, f.Sp, acc);
      }
    }
    tiled::store_blocks<T, F>(yw, f.Sp, c * g.p, g.s, out + r0 * g.p * g.s, g.s);
  });
  return y;
}

template <typename T>
std::tuple<std::vector<Tensor>, Tensor, Tensor> tiled_backward_impl(
    const Tensor& gy, const std::vector<Tensor>& xs, const Tensor& a, const Tensor& b,
    const Geometry& g, bool need_x, bool need_a, bool need_b) {
  using F = typename tiled::Acc<T>::type;
  std::vector<Tensor> dxs;
  Tensor da, db;
  if (allocate_grads(xs, a, b, g, need_x, need_a, need_b, dxs, da, db)) return {dxs, da, db};
  const tiled::Factors<F> f(a.data_ptr<T>(), b.data_ptr<T>(), g.terms, g.p, g.q, g.s, g.t);
  const int64_t chunk = std::min(g.chunk, g.m), chunks = (g.m + g.chunk - 1) / g.chunk;
  const int64_t workers = worker_count(chunks), width = g.q * g.t, out_width = g.p * g.s;
  const int64_t inner = std::max(g.q * f.Sp, g.p * f.Tp);
  const int64_t Qp = tiled::padded<F>(g.q);  // dA's row pitch
  const int64_t a_size = g.terms * g.p * Qp, b_size = g.terms * g.s * f.Tp;
  std::vector<tiled::Buffer<F>> xbuf(workers), gbuf(workers), work(workers), dxbuf(workers),
      compact(workers), transposed(workers), da_acc(workers), db_acc(workers);
  const T* gy_data = gy.data_ptr<T>();
  for_each_chunk(chunks, workers, [&](int64_t w, int64_t index) {
    const int64_t r0 = index * g.chunk, c = std::min(g.chunk, g.m - r0);
    F* x = xbuf[w].get(chunk * width);
    F* gyw = gbuf[w].get(chunk * out_width);
    F* z = work[w].get(chunk * inner);
    F* dx = need_x ? dxbuf[w].get(chunk * g.q * f.Tp) : nullptr;
    F* da_w = need_a ? da_acc[w].zeros(a_size) : nullptr;
    F* zt = need_a ? transposed[w].get(std::max(g.s, g.t) * Qp) : nullptr;
    F* db_w = need_b ? db_acc[w].zeros(b_size) : nullptr;
    tiled::gather<T, F>(xs, r0, c, width, x);
    tiled::load_row<T, F>(gy_data + r0 * out_width, gyw, c * out_width);
    for (int64_t k = 0; k < g.terms; ++k) {
      const F* a_k = f.A(k);
      F* da_k = need_a ? da_w + k * g.p * Qp : nullptr;
      F* db_k = need_b ? db_w + k * g.s * f.Tp : nullptr;
      if (!g.left_first) {  // G_r = Aᵀ dY_r, dA = Σ dY_r Z_rᵀ, dB = Σ Gᵀ X, dX = G B
        if (need_a) {
          tiled::gemm<F>(c * g.q, g.s, g.t, x, g.t, 1, f.Bt(k), f.Sp, z, f.Sp, false);
          for (int64_t r = 0; r < c; ++r) {  // dA += dY_r (Z_rᵀ): Z_r transposed first
            tiled::transpose<F>(g.q, g.s, z + r * g.q * f.Sp, f.Sp, zt, Qp);
            tiled::gemm<F>(g.p, g.q, g.s, gyw + r * out_width, g.s, 1, zt, Qp, da_k, Qp, true);
          }
        }
        if (need_x || need_b) {
          for (int64_t r = 0; r < c; ++r) {
            tiled::gemm<F>(g.q, g.s, g.p, a_k, 1, g.q, gyw + r * out_width, g.s,
                           z + r * g.q * f.Sp, f.Sp, false);
          }
          if (need_b) tiled::gemm<F>(g.s, g.t, c * g.q, z, 1, f.Sp, x, g.t, db_k, f.Tp, true);
          if (need_x) {
            tiled::gemm<F>(c * g.q, g.t, g.s, z, f.Sp, 1, f.B(k), f.Tp, dx, f.Tp, k > 0);
          }
        }
      } else {  // U_r = A X_r, V = dY B:  dB = Σ dYᵀ U, dA = Σ V_r X_rᵀ, dX_r = Aᵀ V_r
        if (need_b) {
          for (int64_t r = 0; r < c; ++r) {
            tiled::gemm<F>(g.p, g.t, g.q, a_k, g.q, 1, x + r * width, g.t, z + r * g.p * f.Tp,
                           f.Tp, false);
          }
          tiled::gemm<F>(g.s, g.t, c * g.p, gyw, 1, g.s, z, f.Tp, db_k, f.Tp, true);
        }
        if (need_a || need_x) {
          tiled::gemm<F>(c * g.p, g.t, g.s, gyw, g.s, 1, f.B(k), f.Tp, z, f.Tp, false);
          for (int64_t r = 0; r < c; ++r) {
            const F* v_r = z + r * g.p * f.Tp;
            if (need_a) {  // dA += V_r X_rᵀ: X_r transposed first
              tiled::transpose<F>(g.q, g.t, x + r * width, g.t, zt, Qp);
              tiled::gemm<F>(g.p, g.q, g.t, v_r, f.Tp, 1, zt, Qp, da_k, Qp, true);
            }
            if (need_x) {
              tiled::gemm<F>(g.q, g.t, g.p, a_k, 1, g.q, v_r, f.Tp, dx + r * g.q * f.Tp, f.Tp,
                             k > 0);
            }
          }
        }
      }
    }
    if (need_x) {
      F* rows = compact[w].get(chunk * width);
      tiled::store_blocks<F, F>(dx, f.Tp, c * g.q, g.t, rows, g.t);
      tiled::scatter<T, F>(rows, width, dxs, r0, c);
    }
  });
  // the workers' dA and dB, summed in F and rounded once
  std::vector<F> da_sum(need_a ? a_size : 0, F(0)), db_sum(need_b ? b_size : 0, F(0));
  for (int64_t w = 0; w < workers; ++w) {
    if (need_a && da_acc[w].data) {
      for (int64_t i = 0; i < a_size; ++i) da_sum[i] += da_acc[w].data[i];
    }
    if (need_b && db_acc[w].data) {
      for (int64_t i = 0; i < b_size; ++i) db_sum[i] += db_acc[w].data[i];
    }
  }
  if (need_a) {
    tiled::store_blocks<T, F>(da_sum.data(), Qp, g.terms * g.p, g.q, da.data_ptr<T>(), g.q);
  }
  if (need_b) {
    tiled::store_blocks<T, F>(db_sum.data(), f.Tp, g.terms * g.s, g.t, db.data_ptr<T>(), g.t);
  }
  return {dxs, da, db};
}

Tensor tiled_forward(const std::vector<Tensor>& xs_in, const Tensor& a_in, const Tensor& b_in,
                     bool left_first, int64_t chunk_rows) {
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const std::vector<Tensor> xs = contiguous_rows(xs_in);
  const Geometry g = geometry(xs, a, b, left_first, chunk_rows);
  Tensor y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "tiled_forward",
                                  [&] { y = tiled_forward_impl<scalar_t>(xs, a, b, g); });
  return y;
}

std::tuple<std::vector<Tensor>, Tensor, Tensor> tiled_backward(
    const Tensor& gy_in, const std::vector<Tensor>& xs_in, const Tensor& a_in,
    const Tensor& b_in, bool left_first, int64_t chunk_rows, bool need_x, bool need_a,
    bool need_b) {
  const Tensor a = a_in.contiguous(), b = b_in.contiguous(), gy = gy_in.contiguous();
  const std::vector<Tensor> xs = contiguous_rows(xs_in);
  const Geometry g = geometry(xs, a, b, left_first, chunk_rows);
  TORCH_CHECK(gy.dim() == 2 && gy.size(0) == g.m && gy.size(1) == g.p * g.s &&
                  gy.scalar_type() == a.scalar_type(),
              "hmfusion_native: gy must be (m, p·s) in the factors' dtype");
  std::tuple<std::vector<Tensor>, Tensor, Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, a.scalar_type(), "tiled_backward",
      [&] { grads = tiled_backward_impl<scalar_t>(gy, xs, a, b, g, need_x, need_a, need_b); });
  return grads;
}

// The autograd node of kron_concat: an eager call pays no Python autograd.Function (with the
// other cuts of that round, the main job's layer went from 356 to 282 µs forward+backward;
// benchmarks/RESULTS.md, Notes). Factors may be
// (p, q) matrices or (terms, p, q) stacks; their gradients come back in their own shapes. The
// node calls the operators above through the dispatcher, so that dispatch modes see them.
Tensor as_stack(const Tensor& factor) { return factor.dim() == 2 ? factor.unsqueeze(0) : factor; }

// (the kernels' own C++ signatures: Tensor[] arrives as a vector)
using ForwardOp = Tensor(const std::vector<Tensor>&, const Tensor&, const Tensor&, bool, int64_t);
using BackwardOp = std::tuple<std::vector<Tensor>, Tensor, Tensor>(
    const Tensor&, const std::vector<Tensor>&, const Tensor&, const Tensor&, bool, int64_t, bool,
    bool, bool);

template <typename Signature>
c10::TypedOperatorHandle<Signature> native_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor kron_concat_kernel(at::TensorList xs, const Tensor& a, const Tensor& b, bool left_first,
                          int64_t chunk_rows, bool tiled) {
  static const auto blas = native_op<ForwardOp>("hmfusion_native::forward");
  static const auto tiles = native_op<ForwardOp>("hmfusion_native::tiled_forward");
  return (tiled ? tiles : blas).call(xs.vec(), as_stack(a), as_stack(b), left_first, chunk_rows);
}

// create_graph = True: the gradients as differentiable ATen products (double backward), per term
// with X_r (q×t), dY_r (p×s):  dX_r = Aᵀ dY_r B,  dA = Σ_r dY_r (X_r Bᵀ)ᵀ,  dB = Σ_r dY_rᵀ A X_r.
std::tuple<std::vector<Tensor>, Tensor, Tensor> differentiable_grads(
    const Tensor& gy, const std::vector<Tensor>& xs, const Tensor& a, const Tensor& b,
    bool need_x, bool need_a, bool need_b) {
  const int64_t m = xs[0].size(0), terms = a.size(0), p = a.size(1), q = a.size(2);
  const int64_t s = b.size(1), t = b.size(2);
  std::vector<Tensor> parts(xs.begin(), xs.end());
  int64_t width = 0;
  for (const auto& x : xs) width += x.size(1);
  if (width < q * t) parts.push_back(at::zeros({m, q * t - width}, xs[0].options()));
  const Tensor x3 = (parts.size() == 1 ? parts[0] : at::cat(parts, 1)).reshape({m, q, t});
  const Tensor g3 = gy.reshape({m, p, s});
  Tensor dx3;
  std::vector<Tensor> da, db;
  for (int64_t k = 0; k < terms; ++k) {
    const Tensor a_k = a.select(0, k), b_k = b.select(0, k);
    if (need_x) {
      Tensor term = at::matmul(a_k.t(), at::matmul(g3, b_k));
      dx3 = k == 0 ? term : dx3 + term;
    }
    if (need_a) da.push_back(at::einsum("mps,mqs->pq", {g3, at::matmul(x3, b_k.t())}));
    if (need_b) db.push_back(at::einsum("mps,mpt->st", {g3, at::matmul(a_k, x3)}));
  }
  std::vector<Tensor> dxs;
  if (need_x) {
    const Tensor dx = dx3.reshape({m, q * t});
    int64_t offset = 0;
    for (const auto& x : xs) {
      dxs.push_back(dx.narrow(1, offset, x.size(1)));
      offset += x.size(1);
    }
  }
  return {dxs, need_a ? at::stack(da) : Tensor(), need_b ? at::stack(db) : Tensor()};
}

struct KronConcatFunction : public torch::autograd::Function<KronConcatFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList xs, const Tensor& a,
                        const Tensor& b, bool left_first, int64_t chunk_rows, bool tiled) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor y = kron_concat_kernel(xs, a, b, left_first, chunk_rows, tiled);
    std::vector<Tensor> saved(xs.begin(), xs.end());
    saved.push_back(a);
    saved.push_back(b);
    ctx->save_for_backward(saved);
    ctx->saved_data["left_first"] = left_first;
    ctx->saved_data["chunk_rows"] = chunk_rows;
    ctx->saved_data["tiled"] = tiled;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    std::vector<Tensor> xs = ctx->get_saved_variables();
    const Tensor b = xs.back();
    xs.pop_back();
    const Tensor a = xs.back();
    xs.pop_back();
    const size_t k = xs.size();
    bool need_x = false;
    for (size_t i = 0; i < k; ++i) need_x = need_x || ctx->needs_input_grad(i);
    const bool need_a = ctx->needs_input_grad(k), need_b = ctx->needs_input_grad(k + 1);
    std::tuple<std::vector<Tensor>, Tensor, Tensor> result;
    if (at::GradMode::is_enabled()) {
      result = differentiable_grads(grads[0], xs, as_stack(a), as_stack(b), need_x, need_a, need_b);
    } else {
      static const auto blas = native_op<BackwardOp>("hmfusion_native::backward");
      static const auto tiles = native_op<BackwardOp>("hmfusion_native::tiled_backward");
      at::AutoDispatchBelowADInplaceOrView guard;
      const bool left_first = ctx->saved_data["left_first"].toBool();
      const int64_t chunk_rows = ctx->saved_data["chunk_rows"].toInt();
      result = (ctx->saved_data["tiled"].toBool() ? tiles : blas)
                   .call(grads[0], xs, as_stack(a), as_stack(b), left_first, chunk_rows, need_x,
                         need_a, need_b);
    }
    auto& [dxs, da, db] = result;
    torch::autograd::variable_list out(k + 5);
    for (size_t i = 0; i < k && need_x; ++i) out[i] = dxs[i];
    if (need_a) out[k] = da.view(a.sizes());
    if (need_b) out[k + 1] = db.view(b.sizes());
    return out;
  }
};

Tensor kron_concat_autograd(at::TensorList xs, const Tensor& a, const Tensor& b, bool left_first,
                            int64_t chunk_rows, bool tiled) {
  if (!at::GradMode::is_enabled()) {  // inference: no node to build
    at::AutoDispatchBelowADInplaceOrView guard;
    return kron_concat_kernel(xs, a, b, left_first, chunk_rows, tiled);
  }
  return KronConcatFunction::apply(xs, a, b, left_first, chunk_rows, tiled);
}

Tensor kron_concat_cpu(at::TensorList xs, const Tensor& a, const Tensor& b, bool left_first,
                       int64_t chunk_rows, bool tiled) {
  return kron_concat_kernel(xs, a, b, left_first, chunk_rows, tiled);
}

}  // namespace

TORCH_LIBRARY(hmfusion_native, m) {
  m.def("forward(Tensor[] xs, Tensor a, Tensor b, bool left_first, int chunk_rows) -> Tensor");
  m.def(
      "backward(Tensor gy, Tensor[] xs, Tensor a, Tensor b, bool left_first, int chunk_rows, "
      "bool need_x, bool need_a, bool need_b) -> (Tensor[], Tensor, Tensor)");
  m.def(
      "tiled_forward(Tensor[] xs, Tensor a, Tensor b, bool left_first, int chunk_rows) -> Tensor");
  m.def(
      "tiled_backward(Tensor gy, Tensor[] xs, Tensor a, Tensor b, bool left_first, "
      "int chunk_rows, bool need_x, bool need_a, bool need_b) -> (Tensor[], Tensor, Tensor)");
  m.def(
      "kron_concat(Tensor[] xs, Tensor a, Tensor b, bool left_first, int chunk_rows, "
      "bool tiled) -> Tensor");
}

TORCH_LIBRARY_IMPL(hmfusion_native, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("tiled_forward", &tiled_forward);
  m.impl("tiled_backward", &tiled_backward);
  m.impl("kron_concat", &kron_concat_cpu);
}

TORCH_LIBRARY_IMPL(hmfusion_native, Autograd, m) { m.impl("kron_concat", &kron_concat_autograd); }
