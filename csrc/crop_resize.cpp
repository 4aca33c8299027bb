// hfcn_bench::crop_resize: schema, CPU kernels, autograd and the CPU registration.
//
// The CPU kernels walk per-crop separable tables built from crop_resize.h (the same functions
// the CUDA kernels use) and parallelise over the B*C input planes: each thread owns whole
// planes. The forward reads a run of planes of one sample once per crop while they sit in L1
// and writes each crop's output for that run as one contiguous stream; the backward reads the
// output gradient once, in memory order (crop by crop, a run of planes at a time), and adds
// every crop's contribution to its planes in crop order. No two threads touch the same
// output, so results are bitwise identical whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <type_traits>
#include <vector>

#include "crop_resize.h"
#include "crop_resize_host.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__AVX512F__) || defined(__AVX2__))
#define HFCN_SIMD 1
#include <immintrin.h>
#endif

namespace hfcn {
namespace {

// ------------------------------------------------------------------------------------------
// Output memory. A fresh multi-MiB tensor from malloc is, as often as not, fresh pages from the
// kernel: glibc returns freed large blocks to the OS (mmap'd chunks, heap trimming), so the
// next call page-faults every 4 KiB of its output and the kernel zero-fills each page first.
// Measured here on the paper shape: ~700 faults and ~1.2 ms of system time per forward +
// backward, more than the two kernels take. The op's outputs therefore come from a small cache
// of recently freed blocks (exact sizes, at most kMaxBlocks blocks / kMaxBytes in all), which
// hands a training step the warm pages of the previous step. Small outputs go to the default
// allocator, which serves them from its arenas without faults.
class OutputCache final : public c10::Allocator {
 public:
  static OutputCache& get() {
    // Never destroyed: tensors holding cached blocks may be freed after static destruction.
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t size = (n + kPage - 1) / kPage * kPage;
    char* base = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
        if (it->size == size) {
          base = it->base;
          cached_ -= size;
          free_.erase(std::next(it).base());
          break;
        }
      }
    }
    if (base == nullptr) {
      void* p = nullptr;
      // One header line in front of the data keeps the block's size; the data stays 64-byte
      // aligned, as the default CPU allocator's is.
      if (posix_memalign(&p, kAlign, size + kAlign) != 0 || p == nullptr)
        TORCH_CHECK_WITH(OutOfMemoryError, false, "crop_resize: out of memory allocating ", size, " bytes");
      base = static_cast<char*>(p);
      *reinterpret_cast<size_t*>(base) = size;
    }
    void* data = base + kAlign;
    return {data, data, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &OutputCache::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static constexpr size_t kAlign = 64, kPage = 4096;
  static constexpr size_t kMinBytes = size_t(256) << 10;
  static constexpr size_t kMaxBytes = size_t(128) << 20;
  static constexpr size_t kMaxBlocks = 8;
  struct Block {
    char* base;
    size_t size;
  };

  static void release(void* data) {
    char* base = static_cast<char*>(data) - kAlign;
    get().put(base, *reinterpret_cast<size_t*>(base));
  }

  void put(char* base, size_t size) {
    std::vector<char*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (size > kMaxBytes) {
        drop.push_back(base);
      } else {
        free_.push_back({base, size});
        cached_ += size;
        while (cached_ > kMaxBytes || free_.size() > kMaxBlocks) {  // drop the oldest first
          drop.push_back(free_.front().base);
          cached_ -= free_.front().size;
          free_.pop_front();
        }
      }
    }
    for (char* p : drop) std::free(p);
  }

  std::mutex mutex_;
  std::deque<Block> free_;
  size_t cached_ = 0;
};

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &OutputCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, std::nullopt);
}

// ------------------------------------------------------------------------------------------
// SIMD fast path (float32 on x86 with AVX2/AVX-512, GCC): a crop row (or output-gradient row)
// is at most two registers wide on the paper's shapes, so the horizontal taps become
// in-register table lookups (vpermps / vpermt2ps) instead of per-element gathers. The lanes
// apply two_tap/accumulate from crop_resize.h, the expressions of the scalar and CUDA paths.
#ifdef HFCN_SIMD
namespace simd {
#if defined(__AVX512F__)
constexpr int64_t K = 16;
#else
constexpr int64_t K = 8;
#endif
typedef float vf __attribute__((vector_size(K * 4)));
typedef int32_t vi __attribute__((vector_size(K * 4)));
typedef float vf_u __attribute__((vector_size(K * 4), aligned(4)));
inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
// Lanes idx (each in [0, K)) of v, and lanes idx (each in [0, 2K)) of the 2K floats lo:hi.
inline vf lookup(vf v, vi idx) { return __builtin_shuffle(v, idx); }
inline vf lookup(vf lo, vf hi, vi idx) { return __builtin_shuffle(lo, hi, idx); }

// Masked loads and stores touch only the first n lanes (n <= K): no read past a row, no write
// into a neighbour's output, and masked-off lanes never fault.
#if defined(__AVX512F__)
inline unsigned lane_mask(int64_t n) { return n >= K ? 0xFFFFu : ((1u << n) - 1u); }
inline vf load_n(const float* p, int64_t n) { return (vf)_mm512_maskz_loadu_ps((__mmask16)lane_mask(n), p); }
inline void store_n(float* p, vf v, int64_t n) { _mm512_mask_storeu_ps(p, (__mmask16)lane_mask(n), (__m512)v); }
#else
inline __m256i lane_mask(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes);
}
inline vf load_n(const float* p, int64_t n) { return (vf)_mm256_maskload_ps(p, lane_mask(n)); }
inline void store_n(float* p, vf v, int64_t n) { _mm256_maskstore_ps(p, lane_mask(n), (__m256)v); }
#endif

// A real broadcast (vf{} + a would have to add 0 + a lane by lane: IEEE keeps 0 + -0 = +0, so
// the compiler cannot drop that add), which folds into the multiply as an embedded broadcast.
#if defined(__AVX512F__)
inline vf splat(float a) { return (vf)_mm512_set1_ps(a); }
#else
inline vf splat(float a) { return (vf)_mm256_set1_ps(a); }
#endif

#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
// Half registers (8 floats): the backward adds a register that holds two planes' 8-column
// window rows (the BFC windows on the paper's map) into the two planes with plain half-width
// loads and stores; masked ones cost several times as much.
#define HFCN_HALF 1
constexpr int64_t KH = K / 2;
typedef float vh __attribute__((vector_size(KH * 4)));
typedef float vh_u __attribute__((vector_size(KH * 4), aligned(4)));
inline vh load_h(const float* p) { return *reinterpret_cast<const vh_u*>(p); }
inline void store_h(float* p, vh v) { *reinterpret_cast<vh_u*>(p) = v; }
inline vh lower_h(vf v) { return (vh)_mm512_castps512_ps256((__m512)v); }
inline vh upper_h(vf v) { return (vh)_mm512_extractf32x8_ps((__m512)v, 1); }
#endif

// The `len` (<= 2K) floats at p as the table lo:hi (lanes past len are zero).
inline void load_row(const float* p, int64_t len, vf& lo, vf& hi) {
  lo = load_n(p, len);
  hi = len > K ? load_n(p + K, len - K) : vf{};
}

}  // namespace simd
#endif

// Forward taps of one axis of one crop: output coordinate -> two source coordinates
// (crop-relative) and their weights.
template <typename acc_t>
struct AxisTaps {
  std::vector<int32_t> i0, i1;
  std::vector<acc_t> w0, w1;

  void build(int64_t in_size, int64_t out_size) {
    i0.resize(out_size);
    i1.resize(out_size);
    w0.resize(out_size);
    w1.resize(out_size);
    for (int64_t d = 0; d < out_size; ++d) {
      int64_t a, b;
      source_taps<acc_t>(d, in_size, out_size, a, b, w0[d], w1[d]);
      i0[d] = static_cast<int32_t>(a);
      i1[d] = static_cast<int32_t>(b);
    }
  }
};

// Adjoint taps of one axis of one crop: source coordinate -> the output coordinates that read
// it (increasing) and their weights, in CSR form. Built from tap_weight/reader_range, so the
// terms and their order are those of column_adjoint/input_grad_element.
template <typename acc_t>
struct AxisReaders {
  std::vector<int32_t> start, index;
  std::vector<acc_t> weight;

  void build(int64_t in_size, int64_t out_size) {
    start.assign(1, 0);
    index.clear();
    weight.clear();
    for (int64_t s = 0; s < in_size; ++s) {
      int64_t lo, hi;
      reader_range(s, in_size, out_size, lo, hi);
      for (int64_t d = lo; d <= hi; ++d) {
        acc_t wt;
        if (tap_weight<acc_t>(d, s, in_size, out_size, wt)) {
          index.push_back(static_cast<int32_t>(d));
          weight.push_back(wt);
        }
      }
      start.push_back(static_cast<int32_t>(index.size()));
    }
  }
};

template <typename T>
T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

struct Box {
  int64_t t, l, h, w;
};

std::vector<Box> read_boxes(const at::Tensor& boxes) {
  const at::Tensor b = boxes.contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  std::vector<Box> out(b.numel() / 4);
  for (size_t k = 0; k < out.size(); ++k) out[k] = {p[4 * k], p[4 * k + 1], p[4 * k + 2], p[4 * k + 3]};
  return out;
}

// Index of the first earlier box with the same (height, width): crops of one size share their
// tables (BFC's five windows are all alpha*h x alpha*w, so one table serves them all).
std::vector<int64_t> table_of(const std::vector<Box>& boxes) {
  std::vector<int64_t> id(boxes.size());
  for (size_t k = 0; k < boxes.size(); ++k) {
    id[k] = static_cast<int64_t>(k);
    for (size_t q = 0; q < k; ++q) {
      if (boxes[q].h == boxes[k].h && boxes[q].w == boxes[k].w) {
        id[k] = id[q];
        break;
      }
    }
  }
  return id;
}

// Planes per parallel task: at least ~32 KiB of output each, so that the task overhead is
// amortised, and at most range / threads, so that every thread gets work.
int64_t plane_grain(int64_t planes, int64_t per_plane_elems) {
  const int64_t by_size = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, per_plane_elems));
  const int64_t by_threads = std::max<int64_t>(1, planes / std::max<int64_t>(1, at::get_num_threads()));
  return std::min(by_size, by_threads);
}

// ------------------------------------------------------------------------------------------
// Forward.

// One crop size's forward tables (crop-relative): column taps, the crop rows the vertical pass
// reads (each lerped once) and the output rows' taps remapped into that compact list.
template <typename acc_t>
struct ForwardTable {
  struct Row {
    int32_t up, down;    // offsets of the output row's two lerped rows (slot * stride)
    int32_t up2, down2;  // the same when two planes' lerped rows are interleaved (slot * 2K)
    acc_t w0, w1;        // and their weights
  };
  AxisTaps<acc_t> rows, cols;
  std::vector<int32_t> row_off;  // plane offsets (crop-relative row * W) of the rows lerped
  std::vector<Row> vrows;        // per output row

  void build(int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t stride, int64_t W) {
    rows.build(h, oh);
    cols.build(w, ow);
    std::vector<int32_t> slot(h, -1);
    for (int64_t i = 0; i < oh; ++i) slot[rows.i0[i]] = slot[rows.i1[i]] = 0;
    row_off.clear();
    for (int64_t r = 0; r < h; ++r) {
      if (slot[r] < 0) continue;
      slot[r] = static_cast<int32_t>(row_off.size());
      row_off.push_back(static_cast<int32_t>(r * W));
    }
    vrows.resize(oh);
    for (int64_t i = 0; i < oh; ++i)
      vrows[i] = {slot[rows.i0[i]] * static_cast<int32_t>(stride), slot[rows.i1[i]] * static_cast<int32_t>(stride),
                  slot[rows.i0[i]] * static_cast<int32_t>(2 * stride), slot[rows.i1[i]] * static_cast<int32_t>(2 * stride),
                  rows.w0[i], rows.w1[i]};
  }
};

#ifdef HFCN_SIMD
// Forward lookup tables of one crop size: per block of K output columns, the crop-relative
// source columns and weights of both taps (lanes past ow: index 0, weight 0, never stored).
struct VecColumnTaps {
  std::vector<simd::vi> i0, i1;
  std::vector<simd::vf> w0, w1;

  template <typename acc_t>
  void build(const AxisTaps<acc_t>& taps, int64_t ow) {
    const int64_t blocks = (ow + simd::K - 1) / simd::K;
    i0.assign(blocks, simd::vi{});
    i1.assign(blocks, simd::vi{});
    w0.assign(blocks, simd::vf{});
    w1.assign(blocks, simd::vf{});
    for (int64_t j = 0; j < ow; ++j) {
      i0[j / simd::K][j % simd::K] = taps.i0[j];
      i1[j / simd::K][j % simd::K] = taps.i1[j];
      w0[j / simd::K][j % simd::K] = static_cast<float>(taps.w0[j]);
      w1[j / simd::K][j % simd::K] = static_cast<float>(taps.w1[j]);
    }
  }
};

// One crop of one plane, float32 SIMD: horizontal lerp of the needed crop rows into `lerped`
// (`crop` points at the crop's top-left pixel), then the vertical blend straight into `out`.
// Output rows are stored as whole registers: a row's spill past ow lands in later rows, or in
// the next planes of the same crop, which are written right after. Only in the last planes of
// a run (LAST) can a store pass `limit`, the end of what this task writes; those are masked.
// BLOCKS = column blocks per row (0: read it from the table); NARROW: a crop row fits one
// register. The paper's shape (8 -> 14 on AVX-512) is BLOCKS = 1, NARROW: its tables then
// live in registers across the plane loop.
template <int64_t BLOCKS, bool NARROW, bool LAST>
inline void forward_crop_simd(const float* __restrict__ crop, int64_t w, const ForwardTable<float>& tb,
                              const VecColumnTaps& vt, float* __restrict__ lerped,
                              float* __restrict__ out, int64_t oh, int64_t ow, const float* limit) {
  using namespace simd;
  const int64_t blocks = BLOCKS ? BLOCKS : static_cast<int64_t>(vt.i0.size());
  const int64_t stride = blocks * K;
  const int64_t n_rows = static_cast<int64_t>(tb.row_off.size());
  const int32_t* __restrict__ row_off = tb.row_off.data();
  if constexpr (BLOCKS == 1 && NARROW) {
    const vi i0 = vt.i0[0], i1 = vt.i1[0];
    const vf w0 = vt.w0[0], w1 = vt.w1[0];
#pragma GCC unroll 2
    for (int64_t q = 0; q < n_rows; ++q) {
      const vf v = load_n(crop + row_off[q], w);
      store(lerped + q * K, two_tap<vf>(lookup(v, i0), lookup(v, i1), w0, w1));
    }
  } else {
    for (int64_t q = 0; q < n_rows; ++q) {
      const float* row = crop + row_off[q];
      float* dst = lerped + q * stride;
      vf lo, hi = vf{};
      if constexpr (NARROW) lo = load_n(row, w);
      else load_row(row, w, lo, hi);
      for (int64_t jb = 0; jb < blocks; ++jb) {
        const vf a = NARROW ? lookup(lo, vt.i0[jb]) : lookup(lo, hi, vt.i0[jb]);
        const vf b = NARROW ? lookup(lo, vt.i1[jb]) : lookup(lo, hi, vt.i1[jb]);
        store(dst + jb * K, two_tap<vf>(a, b, vt.w0[jb], vt.w1[jb]));
      }
    }
  }
  const typename ForwardTable<float>::Row* __restrict__ rows = tb.vrows.data();
#pragma GCC unroll 2
  for (int64_t i = 0; i < oh; ++i) {
    const vf a = splat(rows[i].w0), b = splat(rows[i].w1);
    const float* upper = lerped + rows[i].up;
    const float* lower = lerped + rows[i].down;
    float* orow = out + i * ow;
    for (int64_t jb = 0; jb < blocks; ++jb) {
      const vf v = blend<vf>(load(upper + jb * K), load(lower + jb * K), a, b);
      float* dst = orow + jb * K;
      if (!LAST || dst + K <= limit) store(dst, v);
      else store_n(dst, v, std::min<int64_t>(ow - jb * K, limit - dst));
    }
  }
}

// Two consecutive planes through one crop, for the common case of one register per row
// (BLOCKS = 1, NARROW): each row's indices and weights are loaded once for both planes, which
// takes about a third of the instructions off a kernel that is instruction-bound (tables in
// L1). The planes' outputs are adjacent, so the first plane's stores must not spill into the
// second's, already written, rows: from row first_masked on (the rows within K floats of the
// plane's end) the first plane stores only its own ow lanes. Needs oh * ow >= K.
template <bool LAST>
inline void forward_pair_simd(const float* __restrict__ crop, int64_t plane_in, int64_t w,
                              const ForwardTable<float>& tb, const VecColumnTaps& vt,
                              float* __restrict__ lerped, float* __restrict__ out, int64_t oh, int64_t ow,
                              int64_t first_masked, const float* limit) {
  using namespace simd;
  const int64_t n_rows = static_cast<int64_t>(tb.row_off.size());
  const int32_t* __restrict__ row_off = tb.row_off.data();
  const vi i0 = vt.i0[0], i1 = vt.i1[0];
  const vf w0 = vt.w0[0], w1 = vt.w1[0];
  const float* crop1 = crop + plane_in;
  for (int64_t q = 0; q < n_rows; ++q) {
    const vf v = load_n(crop + row_off[q], w), u = load_n(crop1 + row_off[q], w);
    store(lerped + 2 * q * K, two_tap<vf>(lookup(v, i0), lookup(v, i1), w0, w1));
    store(lerped + (2 * q + 1) * K, two_tap<vf>(lookup(u, i0), lookup(u, i1), w0, w1));
  }
  const typename ForwardTable<float>::Row* __restrict__ rows = tb.vrows.data();
  float* out1 = out + oh * ow;
#pragma GCC unroll 2
  for (int64_t i = 0; i < oh; ++i) {
    const vf a = splat(rows[i].w0), b = splat(rows[i].w1);
    const float* upper = lerped + rows[i].up2;
    const float* lower = lerped + rows[i].down2;
    const vf v0 = blend<vf>(load(upper), load(lower), a, b);
    const vf v1 = blend<vf>(load(upper + K), load(lower + K), a, b);
    if (i < first_masked) store(out + i * ow, v0);
    else store_n(out + i * ow, v0, ow);
    float* dst = out1 + i * ow;
    if (!LAST || dst + K <= limit) store(dst, v1);
    else store_n(dst, v1, std::min<int64_t>(ow, limit - dst));
  }
}
#endif

// One crop of one plane, any dtype: the scalar form of the same two passes.
template <typename scalar_t, typename acc_t>
inline void forward_crop_scalar(const scalar_t* __restrict__ crop, const ForwardTable<acc_t>& tb,
                                acc_t* __restrict__ lerped, int64_t stride, scalar_t* __restrict__ out,
                                int64_t oh, int64_t ow) {
  const int32_t* __restrict__ c0 = tb.cols.i0.data();
  const int32_t* __restrict__ c1 = tb.cols.i1.data();
  const acc_t* __restrict__ wc0 = tb.cols.w0.data();
  const acc_t* __restrict__ wc1 = tb.cols.w1.data();
  const int64_t n_rows = static_cast<int64_t>(tb.row_off.size());
  for (int64_t q = 0; q < n_rows; ++q) {
    const scalar_t* __restrict__ row = crop + tb.row_off[q];
    acc_t* __restrict__ dst = lerped + q * stride;
    for (int64_t j = 0; j < ow; ++j) dst[j] = lerp_row<scalar_t, acc_t>(row, c0[j], c1[j], wc0[j], wc1[j]);
  }
  for (int64_t i = 0; i < oh; ++i) {
    const auto& rw = tb.vrows[i];
    const acc_t* __restrict__ upper = lerped + rw.up;
    const acc_t* __restrict__ lower = lerped + rw.down;
    const acc_t a = rw.w0, b = rw.w1;
    scalar_t* __restrict__ orow = out + i * ow;
#pragma omp simd
    for (int64_t j = 0; j < ow; ++j) orow[j] = static_cast<scalar_t>(blend<acc_t>(upper[j], lower[j], a, b));
  }
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const std::vector<Box>& boxes, bool per_sample,
                    at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t N = y.size(1), oh = y.size(3), ow = y.size(4);
#ifdef HFCN_SIMD
  constexpr bool kSimd = std::is_same<scalar_t, float>::value;
  const int64_t stride = kSimd ? (ow + simd::K - 1) / simd::K * simd::K : ow;
#else
  constexpr bool kSimd = false;
  const int64_t stride = ow;
#endif
  const std::vector<int64_t> tid = table_of(boxes);
  std::vector<ForwardTable<acc_t>> tables(boxes.size());
  int64_t max_needed = 1;
  for (size_t k = 0; k < boxes.size(); ++k) {
    if (tid[k] != static_cast<int64_t>(k)) continue;
    tables[k].build(boxes[k].h, boxes[k].w, oh, ow, stride, W);
    max_needed = std::max<int64_t>(max_needed, static_cast<int64_t>(tables[k].row_off.size()));
  }
#ifdef HFCN_SIMD
  std::vector<VecColumnTaps> vcols(kSimd ? boxes.size() : 0);
  if constexpr (kSimd) {
    for (size_t k = 0; k < boxes.size(); ++k)
      if (tid[k] == static_cast<int64_t>(k) && boxes[k].w <= 2 * simd::K) vcols[k].build(tables[k].cols, ow);
  }
#endif

  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  const int64_t plane_in = H * W, plane_out = oh * ow;
  // Runs of planes of one sample, at most one task's: within a run each crop's output is one
  // contiguous stretch, which lets the SIMD path store whole registers (see forward_crop_simd).
  // Plane by plane inside a run, all crops of a plane while its pixels sit in L1.
  const int64_t run = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, plane_in));
  at::parallel_for(0, B * C, plane_grain(B * C, N * plane_out), [&](int64_t begin, int64_t end) {
    // 64-byte aligned: the SIMD passes store a register to it and load it right back, and a
    // register that straddles two cache lines is not forwarded from the store to the load.
    std::vector<acc_t> lerped_buf(2 * max_needed * stride + stride + 64 / sizeof(acc_t));
    acc_t* lerped = align64(lerped_buf.data());
    for (int64_t p0 = begin; p0 < end;) {
      const int64_t b = p0 / C;
      const int64_t p1 = std::min({end, (b + 1) * C, p0 + run});
#ifdef HFCN_SIMD
      // A store reaches at most K - 1 floats past its row, so only the planes that end within
      // K floats of the run's end can pass it: the others store unchecked.
      const int64_t first_checked = p1 - std::min<int64_t>(p1 - p0, 1 + (simd::K + plane_out - 1) / plane_out);
#endif
      for (int64_t p = p0; p < p1;) {
        const int64_t c = p - b * C;
        const scalar_t* plane = xp + p * plane_in;
#ifdef HFCN_SIMD
        // Two planes at a time through the one-register-per-row crops (all of BFC's on the
        // paper's shape); any other crop of the pair goes plane by plane.
        const bool pair = kSimd && p + 1 < p1 && plane_out >= simd::K;
        if constexpr (kSimd) {
          // The next planes' pixels, fetched while these are computed: the first crop of a
          // plane otherwise waits on each of its rows (the output stream evicts them from L2).
          const char* next = reinterpret_cast<const char*>(plane + (pair ? 2 : 1) * plane_in);
          const char* stop = reinterpret_cast<const char*>(xp + end * plane_in);
          const int64_t bytes = (pair ? 2 : 1) * plane_in * static_cast<int64_t>(sizeof(scalar_t));
          for (int64_t o = 0; o < bytes && next + o < stop; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
        }
#else
        const bool pair = false;
#endif
        for (int64_t n = 0; n < N; ++n) {
          const int64_t k = per_sample ? b * N + n : n;
          const Box& bx = boxes[k];
          const ForwardTable<acc_t>& tb = tables[tid[k]];
          for (int64_t d = 0; d < (pair ? 2 : 1); ++d) {
            const scalar_t* crop = plane + d * plane_in + bx.t * W + bx.l;
            scalar_t* out = yp + ((b * N + n) * C + c + d) * plane_out;
#ifdef HFCN_SIMD
            if constexpr (kSimd) {
              if (bx.w <= 2 * simd::K) {
                const VecColumnTaps& vt = vcols[tid[k]];
                const float* limit = yp + ((b * N + n) * C + (p1 - b * C)) * plane_out;
                const bool one = vt.i0.size() == 1 && bx.w <= simd::K, narrow = bx.w <= simd::K;
                // Two column blocks of a wide crop row (the 28x28 map's 17 -> 28): unrolled.
                const bool two_blocks = vt.i0.size() == 2 && !narrow;
                const bool checked = p + d >= first_checked || (pair && p + 1 >= first_checked);
                if (pair && one) {
                  const int64_t first_masked = (plane_out - simd::K) / ow + 1;
                  if (checked) forward_pair_simd<true>(crop, plane_in, bx.w, tb, vt, lerped, out, oh, ow, first_masked, limit);
                  else forward_pair_simd<false>(crop, plane_in, bx.w, tb, vt, lerped, out, oh, ow, first_masked, limit);
                  break;  // both planes done
                }
                if (!checked) {
                  if (one) forward_crop_simd<1, true, false>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                  else if (narrow) forward_crop_simd<0, true, false>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                  else if (two_blocks) forward_crop_simd<2, false, false>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                  else forward_crop_simd<0, false, false>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                } else {
                  if (one) forward_crop_simd<1, true, true>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                  else if (narrow) forward_crop_simd<0, true, true>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                  else if (two_blocks) forward_crop_simd<2, false, true>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                  else forward_crop_simd<0, false, true>(crop, bx.w, tb, vt, lerped, out, oh, ow, limit);
                }
                continue;
              }
            }
#endif
            forward_crop_scalar<scalar_t, acc_t>(crop, tb, lerped, stride, out, oh, ow);
          }
        }
        p += pair ? 2 : 1;
      }
      p0 = p1;
    }
  });
}

// ------------------------------------------------------------------------------------------
// Backward.

template <typename acc_t>
struct BackwardTable {
  AxisReaders<acc_t> rows, cols;
};

#ifdef HFCN_SIMD
// The float32 SIMD backward of one crop size, by column blocks. Block b covers crop columns
// [c0, c0 + wb) (wb <= K), whose readers lie in output-gradient columns [s0, s0 + span); a
// row's span is loaded into the two-register table lo:hi, and the horizontal taps become
// in-register lookups, as in the forward. A narrow block (2 * wb <= K, span <= K) takes two
// planes side by side: lanes [0, wb) are plane q's columns, [wb, 2 * wb) plane q + 1's, read
// from lo (plane q's span) and hi (plane q + 1's). That fills the registers of both passes
// on the paper's 8-column windows, and of the last, 1-column block of a 17-column one.
//
// Horizontal pass: per lane, up to R reader columns (indices into lo:hi, increasing) and
// their weights; lanes with fewer readers keep their sum by a select, so every lane adds
// exactly the terms of column_adjoint, in its order. Row i's sums go to row i of the block's
// adjoint buffer (one register per row). Vertical pass: per crop row r, its reader rows and
// weights in increasing order, padded to the same count Rv with (oh, 0): row oh of the buffer
// is zero, and a pad adds 0 * 0 = +0 to a sum that started at +0, which leaves it bitwise
// unchanged (such a sum is never -0). So every element adds exactly the terms of
// input_grad_element, in its order.
struct VecBackward {
  struct Block {
    int64_t c0, wb, s0, span, R;
    bool pair;
    std::vector<simd::vi> index, active;
    std::vector<simd::vf> weight;
    simd::vi upper;  // pair: lane l <- lane l + wb (plane q + 1's columns moved to the front)
  };
  std::vector<Block> blocks;
  int64_t Rv = 1;
  std::vector<int32_t> row_index;  // [h][Rv] reader rows (oh: the zero row)
  std::vector<float> row_weight;   // [h][Rv]

  template <typename acc_t>
  bool build(const AxisReaders<acc_t>& rows, const AxisReaders<acc_t>& cols, int64_t h, int64_t w, int64_t oh) {
    using namespace simd;
    blocks.clear();
    for (int64_t c0 = 0; c0 < w; c0 += K) {
      Block bk;
      bk.c0 = c0;
      bk.wb = std::min<int64_t>(K, w - c0);
      int32_t lo = INT32_MAX, hi = -1;
      bk.R = 0;
      for (int64_t kk = c0; kk < c0 + bk.wb; ++kk) {
        const int32_t first = cols.start[kk], last = cols.start[kk + 1];
        if (last > first) {
          lo = std::min(lo, cols.index[first]);
          hi = std::max(hi, cols.index[last - 1]);
        }
        bk.R = std::max<int64_t>(bk.R, last - first);
      }
      bk.s0 = hi < 0 ? 0 : lo;
      bk.span = hi < 0 ? 0 : hi - lo + 1;
      if (bk.span > 2 * K) return false;  // the readers do not fit the table: scalar path
      bk.pair = 2 * bk.wb <= K && bk.span <= K;
      bk.index.assign(bk.R, vi{});
      bk.active.assign(bk.R, vi{});
      bk.weight.assign(bk.R, vf{});
      for (int64_t u = 0; u < (bk.pair ? 2 : 1); ++u) {
        for (int64_t kk = c0; kk < c0 + bk.wb; ++kk) {
          const int64_t lane = u * bk.wb + kk - c0;
          const int32_t first = cols.start[kk], n = cols.start[kk + 1] - first;
          for (int32_t r = 0; r < n; ++r) {
            bk.index[r][lane] = static_cast<int32_t>(u * K + cols.index[first + r] - bk.s0);
            bk.weight[r][lane] = static_cast<float>(cols.weight[first + r]);
            bk.active[r][lane] = -1;
          }
        }
      }
      for (int64_t l = 0; l < K; ++l) bk.upper[l] = static_cast<int32_t>(std::min<int64_t>(l + bk.wb, K - 1));
      blocks.push_back(std::move(bk));
    }
    Rv = 1;
    for (int64_t r = 0; r < h; ++r) Rv = std::max<int64_t>(Rv, rows.start[r + 1] - rows.start[r]);
    row_index.assign(h * Rv, static_cast<int32_t>(oh));
    row_weight.assign(h * Rv, 0.0f);
    for (int64_t r = 0; r < h; ++r) {
      for (int32_t e = rows.start[r], q = 0; e < rows.start[r + 1]; ++e, ++q) {
        row_index[r * Rv + q] = rows.index[e];
        row_weight[r * Rv + q] = static_cast<float>(rows.weight[e]);
      }
    }
    return true;
  }
};

// Rows whose horizontal adjoints are summed side by side: each sum is a chain of dependent
// adds, so G independent ones keep the adder busy. G rows' tables (2 registers each) and sums
// stay in registers: up to 4 on AVX-512 (32 registers), 2 on AVX2 (16).
constexpr int64_t kGroups = simd::K == 16 ? 4 : 2;

// Horizontal pass of one block over G rows from row i0 of plane q (and of plane q + 1 when the
// block takes pairs and `two`): row i of `adj` (stride K) = what gradient row i sends to the
// block's columns. `g0`, `g1`: the planes' output gradient.
template <int64_t G>
inline void horizontal_rows_simd(const float* __restrict__ g0, const float* __restrict__ g1, bool two, int64_t i0,
                                 int64_t ow, const VecBackward::Block& bk, float* __restrict__ adj) {
  using namespace simd;
  const int64_t R = bk.R, span = bk.span;
  const vi* __restrict__ idx = bk.index.data();
  const vi* __restrict__ act = bk.active.data();
  const vf* __restrict__ wt = bk.weight.data();
  vf lo[G], hi[G], sum[G];
  for (int64_t q = 0; q < G; ++q) {
    const float* row = g0 + (i0 + q) * ow + bk.s0;
    if (bk.pair) {
      lo[q] = load_n(row, span);
      hi[q] = load_n(g1 + (i0 + q) * ow + bk.s0, two ? span : 0);
    } else {
      load_row(row, span, lo[q], hi[q]);
    }
    sum[q] = vf{};
  }
  for (int64_t r = 0; r < R; ++r) {
    const vi ix = idx[r], on = act[r];
    const vf w = wt[r];
    for (int64_t q = 0; q < G; ++q) {
      const vf term = accumulate<vf>(sum[q], w, lookup(lo[q], hi[q], ix));
      sum[q] = on ? term : sum[q];
    }
  }
  for (int64_t q = 0; q < G; ++q) store(adj + (i0 + q) * K, sum[q]);
}

// The horizontal pass of one block over all oh rows: kGroups rows at a time, then the rest.
inline void horizontal_block_simd(const float* __restrict__ g0, const float* __restrict__ g1, bool two,
                                  int64_t oh, int64_t ow, const VecBackward::Block& bk, float* __restrict__ adj) {
  int64_t i0 = 0;
  for (; i0 + kGroups <= oh; i0 += kGroups) horizontal_rows_simd<kGroups>(g0, g1, two, i0, ow, bk, adj);
  if (kGroups > 2 && i0 + 2 <= oh) {
    horizontal_rows_simd<2>(g0, g1, two, i0, ow, bk, adj);
    i0 += 2;
  }
  for (; i0 < oh; ++i0) horizontal_rows_simd<1>(g0, g1, two, i0, ow, bk, adj);
}

// Vertical pass of one block: crop row r of the block gets the sum over its reader rows of
// weight * adj row, added into the window of plane q (`dst0`, row stride W) and, for a pair
// and `two`, of plane q + 1 (`dst1`).
// RV: the reader count per row when known at compile time (0: vb.Rv).
template <int64_t RV>
inline void vertical_rows_simd(const float* __restrict__ adj, int64_t h, const VecBackward& vb,
                               const VecBackward::Block& bk, float* __restrict__ dst0, float* __restrict__ dst1,
                               bool two, int64_t W) {
  using namespace simd;
  const int64_t Rv = RV ? RV : vb.Rv, wb = bk.wb;
  const int32_t* __restrict__ ri = vb.row_index.data();
  const float* __restrict__ rw = vb.row_weight.data();
  for (int64_t r = 0; r < h; ++r) {
    vf acc = vf{};
    for (int64_t e = 0; e < Rv; ++e) acc = accumulate<vf>(acc, splat(rw[r * Rv + e]), load(adj + ri[r * Rv + e] * K));
    float* d0 = dst0 + r * W + bk.c0;
#ifdef HFCN_HALF
    if (wb == KH) {
      store_h(d0, load_h(d0) + lower_h(acc));
      if (bk.pair && two) {
        float* d1 = dst1 + r * W + bk.c0;
        store_h(d1, load_h(d1) + upper_h(acc));
      }
      continue;
    }
#endif
    if (wb <= 2) {  // a block of one or two columns: scalar adds (masked stores are slow)
      for (int64_t l = 0; l < wb; ++l) d0[l] += acc[l];
      if (bk.pair && two)
        for (int64_t l = 0; l < wb; ++l) dst1[r * W + bk.c0 + l] += acc[wb + l];
      continue;
    }
    if (wb == K) store(d0, load(d0) + acc);
    else store_n(d0, load_n(d0, wb) + acc, wb);
    if (bk.pair && two) {
      float* d1 = dst1 + r * W + bk.c0;
      store_n(d1, load_n(d1, wb) + lookup(acc, bk.upper), wb);
    }
  }
}

// The vertical pass with the row loop unrolled for the common reader counts (upsampling by
// less than 2 gives 3 or 4; 4 or 5 by less than 3).
inline void vertical_block_simd(const float* __restrict__ adj, int64_t h, const VecBackward& vb,
                                const VecBackward::Block& bk, float* __restrict__ dst0, float* __restrict__ dst1,
                                bool two, int64_t W) {
  switch (vb.Rv) {
    case 2: return vertical_rows_simd<2>(adj, h, vb, bk, dst0, dst1, two, W);
    case 3: return vertical_rows_simd<3>(adj, h, vb, bk, dst0, dst1, two, W);
    case 4: return vertical_rows_simd<4>(adj, h, vb, bk, dst0, dst1, two, W);
    case 5: return vertical_rows_simd<5>(adj, h, vb, bk, dst0, dst1, two, W);
    default: return vertical_rows_simd<0>(adj, h, vb, bk, dst0, dst1, two, W);
  }
}
#endif

template <typename scalar_t, typename acc_t>
inline void backward_crop_scalar(const scalar_t* __restrict__ gplane, int64_t oh, int64_t ow,
                                 int64_t h, int64_t w, const BackwardTable<acc_t>& tb,
                                 acc_t* __restrict__ col_adj, int64_t stride,
                                 acc_t* __restrict__ contrib, acc_t* __restrict__ total, int64_t W) {
  const int32_t* __restrict__ cs = tb.cols.start.data();
  const int32_t* __restrict__ ci = tb.cols.index.data();
  const acc_t* __restrict__ cw = tb.cols.weight.data();
  for (int64_t i = 0; i < oh; ++i) {
    const scalar_t* __restrict__ grow = gplane + i * ow;
    acc_t* __restrict__ dst = col_adj + i * stride;
    for (int64_t kk = 0; kk < w; ++kk) {
      acc_t sum = acc_t(0);
      for (int32_t e = cs[kk]; e < cs[kk + 1]; ++e) sum = accumulate<acc_t>(sum, cw[e], static_cast<acc_t>(grow[ci[e]]));
      dst[kk] = sum;
    }
  }
  const int32_t* __restrict__ rs = tb.rows.start.data();
  const int32_t* __restrict__ ri = tb.rows.index.data();
  const acc_t* __restrict__ rw = tb.rows.weight.data();
  for (int64_t r = 0; r < h; ++r) {
    for (int64_t kk = 0; kk < w; ++kk) contrib[kk] = acc_t(0);
    for (int32_t e = rs[r]; e < rs[r + 1]; ++e) {
      const acc_t wt = rw[e];
      const acc_t* __restrict__ src = col_adj + ri[e] * stride;
#pragma omp simd
      for (int64_t kk = 0; kk < w; ++kk) contrib[kk] = accumulate<acc_t>(contrib[kk], wt, src[kk]);
    }
    acc_t* __restrict__ dst = total + r * W;
#pragma omp simd
    for (int64_t kk = 0; kk < w; ++kk) dst[kk] += contrib[kk];
  }
}

// The backward streams the output gradient in memory order. Each task owns whole input planes
// and walks them in runs of planes of one sample (a few KiB of input gradient, which stay in
// L1): the run is zeroed, then, crop by crop, the run's planes of that crop, which lie back to
// back in the gradient, are read once and their contributions added into the run. Every input
// element still sums its crops in index order, so the result does not depend on the runs, the
// tasks or the thread count.
template <typename scalar_t>
void backward_kernel(const at::Tensor& g, const std::vector<Box>& boxes, bool per_sample,
                     at::Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), oh = g.size(3), ow = g.size(4);
  const int64_t H = gx.size(2), W = gx.size(3);
  // float32/float64 accumulate straight into the output; half types in an acc buffer.
  constexpr bool kInPlace = std::is_same<acc_t, scalar_t>::value;
  const std::vector<int64_t> tid = table_of(boxes);
  std::vector<BackwardTable<acc_t>> tables(boxes.size());
  int64_t max_w = 1;
  for (size_t k = 0; k < boxes.size(); ++k) {
    max_w = std::max(max_w, boxes[k].w);
    if (tid[k] != static_cast<int64_t>(k)) continue;
    tables[k].rows.build(boxes[k].h, oh);
    tables[k].cols.build(boxes[k].w, ow);
  }
  // The scalar path's adjoint buffer: oh rows of max_w.
  int64_t adj_size = oh * max_w;
#ifdef HFCN_SIMD
  constexpr bool kSimd = std::is_same<scalar_t, float>::value;
  std::vector<VecBackward> vtab(kSimd ? boxes.size() : 0);
  std::vector<char> vec_ok(boxes.size(), 0);
  if constexpr (kSimd) {
    for (size_t k = 0; k < boxes.size(); ++k) {
      if (tid[k] != static_cast<int64_t>(k)) continue;
      vec_ok[k] = vtab[k].build(tables[k].rows, tables[k].cols, boxes[k].h, boxes[k].w, oh);
      // One buffer per block: oh rows and the zero row, a register each.
      if (vec_ok[k])
        adj_size = std::max<int64_t>(adj_size, static_cast<int64_t>(vtab[k].blocks.size()) * (oh + 1) * simd::K);
    }
  }
#else
  constexpr bool kSimd = false;
#endif

  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* gxp = gx.data_ptr<scalar_t>();
  const int64_t plane_in = H * W, plane_out = oh * ow;
  // Planes per run: ~16 KiB of input gradient, so that the run, the adjoint buffer and the
  // tables share L1.
  const int64_t run = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, plane_in));
  at::parallel_for(0, B * C, plane_grain(B * C, plane_in + N * plane_out), [&](int64_t begin, int64_t end) {
    // Zeroed once: the SIMD blocks' zero rows are never written. 64-byte aligned: the SIMD
    // passes store registers to it and load them right back.
    std::vector<acc_t> total_buf(kInPlace ? 0 : std::min(run, end - begin) * plane_in),
        adj_buf(adj_size + 64 / sizeof(acc_t), acc_t(0)), contrib_buf(max_w);
    acc_t* adj = align64(adj_buf.data());
    for (int64_t p0 = begin; p0 < end;) {
      const int64_t b = p0 / C, c0 = p0 % C;
      const int64_t p1 = std::min({end, (b + 1) * C, p0 + run});
      scalar_t* out = gxp + p0 * plane_in;
      acc_t* total;
      if constexpr (kInPlace) total = reinterpret_cast<acc_t*>(out);
      else total = total_buf.data();
      std::fill(total, total + (p1 - p0) * plane_in, acc_t(0));
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = per_sample ? b * N + n : n;
        const Box& bx = boxes[k];
        const int64_t t = tid[k];
        const scalar_t* gplanes = gp + ((b * N + n) * C + c0) * plane_out;  // the run's planes, back to back
        acc_t* windows = total + bx.t * W + bx.l;
#ifdef HFCN_SIMD
        if constexpr (kSimd) {
          if (vec_ok[t]) {
            const VecBackward& vb = vtab[t];
            for (size_t blk = 0; blk < vb.blocks.size(); ++blk) {
              const VecBackward::Block& bk = vb.blocks[blk];
              float* badj = adj + blk * (oh + 1) * simd::K;
              for (int64_t q = 0; q < p1 - p0; q += bk.pair ? 2 : 1) {
                const bool two = bk.pair && q + 1 < p1 - p0;
                const float* g0 = gplanes + q * plane_out;
                if (blk == 0 && bk.pair) {
                  // The next pair of gradient planes (or, after the run's last pair, the next
                  // crop's first two), requested while this pair is summed: profiled on the
                  // paper's shape, the backward otherwise waits on its rows' loads. Only for
                  // paired blocks, whose two small planes fit L1 beside the run; prefetching
                  // a single 28x28 plane ahead measured slower.
                  const float* ahead = q + 2 < p1 - p0 ? g0 + 2 * plane_out
                                       : (n + 1 < N ? gp + ((b * N + n + 1) * C + c0) * plane_out : nullptr);
                  if (ahead != nullptr) {
                    const char* a = reinterpret_cast<const char*>(ahead);
                    const int64_t bytes = 2 * plane_out * static_cast<int64_t>(sizeof(float));
                    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(a + o, _MM_HINT_T0);
                  }
                }
                horizontal_block_simd(g0, g0 + plane_out, two, oh, ow, bk, badj);
                float* d0 = windows + q * plane_in;
                vertical_block_simd(badj, bx.h, vb, bk, d0, d0 + plane_in, two, W);
              }
            }
            continue;
          }
        }
#endif
        for (int64_t q = 0; q < p1 - p0; ++q)
          backward_crop_scalar<scalar_t, acc_t>(gplanes + q * plane_out, oh, ow, bx.h, bx.w, tables[t], adj, max_w,
                                                contrib_buf.data(), windows + q * plane_in, W);
      }
      if constexpr (!kInPlace) {
        for (int64_t e = 0; e < (p1 - p0) * plane_in; ++e) out[e] = static_cast<scalar_t>(total[e]);
      }
      p0 = p1;
    }
  });
}

// ------------------------------------------------------------------------------------------
// Entries.

at::Tensor crop_resize_cpu(const at::Tensor& x_in, const at::Tensor& boxes, int64_t out_h,
                           int64_t out_w) {
  check_forward_meta(x_in, boxes, out_h, out_w, /*allow_cpu_boxes=*/false);
  check_box_values("crop_resize", boxes, x_in.size(2), x_in.size(3));
  const at::Tensor x = x_in.contiguous();
  const int64_t N = boxes.size(-2);
  at::Tensor y = empty_output({x.size(0), N, x.size(1), out_h, out_w}, x.scalar_type());
  if (y.numel() == 0) return y;
  const std::vector<Box> bx = read_boxes(boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_resize_cpu", [&] {
    forward_kernel<scalar_t>(x, bx, boxes.dim() == 3, y);
  });
  return y;
}

at::Tensor crop_resize_backward_cpu(const at::Tensor& grad_in, const at::Tensor& boxes,
                                    int64_t in_h, int64_t in_w) {
  check_backward_meta(grad_in, boxes, in_h, in_w, /*allow_cpu_boxes=*/false);
  check_box_values("crop_resize_backward", boxes, in_h, in_w);
  const at::Tensor g = grad_in.contiguous();
  at::Tensor gx = empty_output({g.size(0), g.size(2), in_h, in_w}, g.scalar_type());
  if (gx.numel() == 0) return gx;
  if (g.numel() == 0) return gx.zero_();
  const std::vector<Box> bx = read_boxes(boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "crop_resize_backward_cpu", [&] {
    backward_kernel<scalar_t>(g, bx, boxes.dim() == 3, gx);
  });
  return gx;
}

// ------------------------------------------------------------------------------------------
// Autograd, in C++ so that a differentiable call costs a few microseconds instead of the tens
// a Python autograd kernel takes (a serial share that shows on a ~1 ms op run on two threads).
// The op is linear, so crop_resize_backward is its derivative and crop_resize in turn the
// derivative of crop_resize_backward: gradients of any order, through the dispatcher (CPU or
// CUDA kernels alike).

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& boxes, int64_t oh, int64_t ow) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hfcn_bench::crop_resize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  return op.call(x, boxes, oh, ow);
}

at::Tensor call_backward(const at::Tensor& g, const at::Tensor& boxes, int64_t h, int64_t w) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hfcn_bench::crop_resize_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  return op.call(g, boxes, h, w);
}

// The op is linear in its tensor argument, so its derivative is its adjoint and the adjoint's
// derivative is the op again: one Function serves both, with the two calls swapped. Apply and
// Adjoint take (tensor, boxes, size, size); the sizes the adjoint needs are dims Dim and Dim + 1
// of the input (x is [N, C, H, W]: dims 2, 3; a gradient is [N, K, C, OH, OW]: dims 3, 4).
using LinearCall = at::Tensor (*)(const at::Tensor&, const at::Tensor&, int64_t, int64_t);

template <LinearCall Apply, LinearCall Adjoint, int64_t Dim>
class LinearBoxFn : public torch::autograd::Function<LinearBoxFn<Apply, Adjoint, Dim>> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& t,
                            const at::Tensor& boxes, int64_t s0, int64_t s1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = Apply(t, boxes, s0, s1);  // first: it checks t's rank
    ctx->save_for_backward({boxes});
    ctx->saved_data["s0"] = t.size(Dim);
    ctx->saved_data["s1"] = t.size(Dim + 1);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor boxes = ctx->get_saved_variables()[0];
    const at::Tensor g = Adjoint(grads[0].contiguous(), boxes, ctx->saved_data["s0"].toInt(),
                                 ctx->saved_data["s1"].toInt());
    return {g, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

using CropResizeFn = LinearBoxFn<call_forward, call_backward, 2>;
using CropResizeBackwardFn = LinearBoxFn<call_backward, call_forward, 3>;

at::Tensor crop_resize_autograd(const at::Tensor& x, const at::Tensor& boxes, int64_t oh, int64_t ow) {
  return CropResizeFn::apply(x, boxes, oh, ow);
}

at::Tensor crop_resize_backward_autograd(const at::Tensor& g, const at::Tensor& boxes, int64_t h,
                                         int64_t w) {
  return CropResizeBackwardFn::apply(g, boxes, h, w);
}

}  // namespace
}  // namespace hfcn

// crop_resize: windows (top, left, height, width) of x[B, C, H, W], each resized bilinearly
// (align_corners=False, clamped at the crop border) -> [B, N, C, out_h, out_w].
// crop_resize_backward: its adjoint, grad[B, N, C, oh, ow] -> [B, C, in_h, in_w].
TORCH_LIBRARY(hfcn_bench, m) {
  m.def("crop_resize(Tensor x, Tensor boxes, int out_h, int out_w) -> Tensor");
  m.def("crop_resize_backward(Tensor grad, Tensor boxes, int in_h, int in_w) -> Tensor");
}

TORCH_LIBRARY_IMPL(hfcn_bench, CPU, m) {
  m.impl("crop_resize", &hfcn::crop_resize_cpu);
  m.impl("crop_resize_backward", &hfcn::crop_resize_backward_cpu);
}

TORCH_LIBRARY_IMPL(hfcn_bench, Autograd, m) {
  m.impl("crop_resize", &hfcn::crop_resize_autograd);
  m.impl("crop_resize_backward", &hfcn::crop_resize_backward_autograd);
}
