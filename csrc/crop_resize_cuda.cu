// hfcn_bench::crop_resize CUDA kernels.
//
// Forward: one block per (crop, tile of its output). The block computes the crop's row and
// column taps once into shared memory; each thread then produces VEC consecutive outputs from
// them (output_from_taps, the expression the CPU kernels evaluate) and stores them as one
// 16-byte vector.
// Backward: a gather, no atomics, so bitwise reproducible. A small kernel first builds, once
// per crop, the reader tables of its rows and columns (reader_list, the CPU tables' rule);
// then one thread per input element sums, crop by crop in index order, what the crops that
// read it received (input_grad_from_tables).
//
// No host-device synchronisation: CPU boxes are checked on the host and copied asynchronously
// from pinned memory; CUDA boxes are checked by the kernels. A window that does not fit is
// clamped into the map there (clamp_box: the kernels never read or write outside the map,
// whatever the boxes hold) and recorded in a small block of mapped host memory; the next
// CUDA call of the op, or hfcn_bench::take_box_error, turns it into the same error the host check
// raises. Reading that record is a plain host memory read, not a copy or a sync.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>

#include "crop_resize.h"
#include "crop_resize_host.h"

namespace hfcn {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  // A grid-stride loop covers the rest; 65535 * 32 blocks keeps every GPU busy.
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(65535) * 32);
}

// ------------------------------------------------------------------------------------------
// The device-side box check's record.

struct BoxFault {
  int state;  // 0: none; 1: a kernel is writing it; 2: ready for the host
  int backward;
  int shared;
  int device;
  long long k, n, t, l, h, w, in_h, in_w;
};

std::once_flag fault_once;
// Guards the host's side of the record: publishing it, and taking a fault from it (two host
// threads never both raise, or one half-read, the same fault).
std::mutex fault_take_mutex;
BoxFault* fault_record = nullptr;  // mapped, pinned host memory: one record for the process
BoxFault* fault_device = nullptr;  // its address for kernels (the same on every device: UVA)

BoxFault* fault_for_kernels() {
  std::call_once(fault_once, [] {
    void* p = nullptr;
    C10_CUDA_CHECK(cudaHostAlloc(&p, sizeof(BoxFault), cudaHostAllocMapped | cudaHostAllocPortable));
    std::memset(p, 0, sizeof(BoxFault));
    void* dev = nullptr;
    C10_CUDA_CHECK(cudaHostGetDevicePointer(&dev, p, 0));
    std::lock_guard<std::mutex> lock(fault_take_mutex);
    fault_device = static_cast<BoxFault*>(dev);
    fault_record = static_cast<BoxFault*>(p);
  });
  return fault_device;
}

// The recorded fault's message, "" if none; clears the record.
std::string take_fault() {
  std::lock_guard<std::mutex> lock(fault_take_mutex);
  if (fault_record == nullptr) return "";
  volatile BoxFault* f = fault_record;
  if (f->state != 2) return "";
  std::atomic_thread_fence(std::memory_order_acquire);
  const BoxFault r = *const_cast<BoxFault*>(fault_record);
  f->state = 0;
  return box_error_message(r.backward ? "crop_resize_backward" : "crop_resize", r.shared != 0, r.k, r.n,
                           r.t, r.l, r.h, r.w, r.in_h, r.in_w) +
         " (found on cuda:" + std::to_string(r.device) +
         " by the device-side check of an earlier call, which computed with the window clamped "
         "into the map; pass boxes on the CPU to have them checked before the call)";
}

void raise_pending_fault() {
  const std::string msg = take_fault();
  TORCH_CHECK_VALUE(msg.empty(), msg);
}

// Reads box k, checks it and returns it clamped into the map; a bad box is recorded once.
__device__ void load_box(const int64_t* boxes, int64_t k, int64_t n, bool shared, int64_t in_h,
                         int64_t in_w, bool backward, int device, BoxFault* fault, int64_t out[4]) {
  int64_t t = boxes[4 * k], l = boxes[4 * k + 1], h = boxes[4 * k + 2], w = boxes[4 * k + 3];
  if (!box_fits(t, l, h, w, in_h, in_w)) {
    if (atomicCAS_system(&fault->state, 0, 1) == 0) {  // system scope: the record is shared by all GPUs
      fault->backward = backward;
      fault->shared = shared;
      fault->device = device;
      fault->k = k;
      fault->n = n;
      fault->t = t;
      fault->l = l;
      fault->h = h;
      fault->w = w;
      fault->in_h = in_h;
      fault->in_w = in_w;
      __threadfence_system();
      atomicExch_system(&fault->state, 2);
    }
    clamp_box(t, l, h, w, in_h, in_w);
  }
  out[0] = t;
  out[1] = l;
  out[2] = h;
  out[3] = w;
}

// Boxes on the device of `maps`. CPU ones were checked on the host (check_box_values) and are
// copied from pinned memory without blocking: a copy from pageable memory may wait for the
// stream, and the caching host allocator keeps the pinned block until the copy has run.
at::Tensor device_boxes(const at::Tensor& boxes, const at::Tensor& maps) {
  if (boxes.is_cpu()) return boxes.contiguous().pin_memory().to(maps.device(), at::kLong, /*non_blocking=*/true);
  return boxes.contiguous();
}

// ------------------------------------------------------------------------------------------
// Forward.

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// Outputs per thread and iteration: one 16-byte store (or one element when the slab's size or
// the pointer do not allow aligned vectors).
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / sizeof(scalar_t) > 0 ? static_cast<int>(16 / sizeof(scalar_t)) : 1;
}

// Per crop slab (C * oh * ow outputs), `tiles` blocks; taps in shared memory: rows then
// columns, each (offset0, offset1, w0, w1) with offsets absolute (row * W, column) in the plane.
template <typename scalar_t, int VEC>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ boxes,
                               scalar_t* __restrict__ y, int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t oh, int64_t ow, bool per_sample, int64_t tiles,
                               int64_t tile_elems, int device, BoxFault* fault) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];  // int64 offsets first: 8-byte aligned at least
  int64_t* off = reinterpret_cast<int64_t*>(smem_raw);          // [oh + ow][2]
  acc_t* wt = reinterpret_cast<acc_t*>(off + 2 * (oh + ow));      // [oh + ow][2]
  __shared__ int64_t box[4];

  const int64_t crop = blockIdx.x / tiles, tile = blockIdx.x % tiles;
  const int64_t b = crop / N, n = crop % N;
  if (threadIdx.x == 0)
    load_box(boxes, per_sample ? crop : n, N, !per_sample, H, W, false, device, fault, box);
  __syncthreads();
  const int64_t t = box[0], l = box[1], h = box[2], w = box[3];
  for (int64_t d = threadIdx.x; d < oh + ow; d += blockDim.x) {
    int64_t i0, i1;
    acc_t w0, w1;
    if (d < oh) {
      source_taps<acc_t>(d, h, oh, i0, i1, w0, w1);
      off[2 * d] = (t + i0) * W + l;
      off[2 * d + 1] = (t + i1) * W + l;
    } else {
      source_taps<acc_t>(d - oh, w, ow, i0, i1, w0, w1);
      off[2 * d] = i0;
      off[2 * d + 1] = i1;
    }
    wt[2 * d] = w0;
    wt[2 * d + 1] = w1;
  }
  __syncthreads();

  const int64_t plane_out = oh * ow, slab = C * plane_out;
  const int64_t begin = tile * tile_elems, end = min(slab, begin + tile_elems);
  scalar_t* out = y + crop * slab;
  const scalar_t* xb = x + b * C * H * W;
  for (int64_t e0 = begin + int64_t(threadIdx.x) * VEC; e0 < end; e0 += int64_t(blockDim.x) * VEC) {
    // In-slab coordinates in 32 bits (the host checks slab < 2^31): two divisions per VEC
    // outputs, then stepped.
    int c = static_cast<int>(e0) / static_cast<int>(plane_out);
    const int rem = static_cast<int>(e0) - c * static_cast<int>(plane_out);
    int i = rem / static_cast<int>(ow), j = rem - i * static_cast<int>(ow);
    Pack<scalar_t, VEC> pack;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      if (e0 + v < end) {
        const scalar_t* plane = xb + int64_t(c) * H * W;
        const int64_t jc = oh + j;
        pack.v[v] = static_cast<scalar_t>(output_from_taps<scalar_t, acc_t>(
            plane + off[2 * i], plane + off[2 * i + 1], off[2 * jc], off[2 * jc + 1], wt[2 * jc],
            wt[2 * jc + 1], wt[2 * i], wt[2 * i + 1]));
      }
      if (++j == ow) {
        j = 0;
        if (++i == oh) {
          i = 0;
          ++c;
        }
      }
    }
    if (e0 + VEC <= end) {
      *reinterpret_cast<Pack<scalar_t, VEC>*>(out + e0) = pack;
    } else {
      for (int v = 0; v < VEC && e0 + v < end; ++v) out[e0 + v] = pack.v[v];
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward.

// Layout of one crop's reader tables in a launch's scratch buffer: rows then columns; per axis
// `count[in]` and `in * capacity` (index, weight) slots, sized for any window of the map.
struct TableLayout {
  int64_t H, W, oh, ow;
  int64_t row_slots, col_slots;  // 2 * out + 5 * in: enough for every window size (crop_resize.h)
  int64_t bytes_per_crop;

  __host__ __device__ TableLayout(int64_t H_, int64_t W_, int64_t oh_, int64_t ow_)
      : H(H_), W(W_), oh(oh_), ow(ow_), row_slots(2 * oh_ + 5 * H_), col_slots(2 * ow_ + 5 * W_) {
    // box (32 bytes), counts (4 each), indices (4 each), weights (up to 8 each) and up to 8
    // bytes to align the weights; whole 16-byte units so that every crop's region stays aligned.
    const int64_t bytes = 32 + (H + W) * 4 + (row_slots + col_slots) * (4 + 8) + 8;
    bytes_per_crop = (bytes + 15) / 16 * 16;
  }
};

template <typename acc_t>
struct CropTables {
  int64_t* box;  // clamped (t, l, h, w)
  int32_t *row_count, *col_count, *row_index, *col_index;
  acc_t *row_weight, *col_weight;

  __host__ __device__ CropTables(unsigned char* base, const TableLayout& L, int64_t crop) {
    unsigned char* p = base + crop * L.bytes_per_crop;
    box = reinterpret_cast<int64_t*>(p);
    row_count = reinterpret_cast<int32_t*>(p + 32);
    col_count = row_count + L.H;
    row_index = col_count + L.W;
    col_index = row_index + L.row_slots;
    // weights after the indices, 4-byte aligned (acc_t is float for every dtype but double,
    // whose slots then start 8-byte aligned since bytes_per_crop and the prefix are).
    unsigned char* wp = reinterpret_cast<unsigned char*>(col_index + L.col_slots);
    wp += (8 - (reinterpret_cast<uintptr_t>(wp) & 7)) & 7;
    row_weight = reinterpret_cast<acc_t*>(wp);
    col_weight = row_weight + L.row_slots;
  }
};

// One block per crop: check and clamp its box, then each thread lists the readers of some
// rows and columns of the window.
template <typename acc_t>
__global__ void tables_kernel(const int64_t* __restrict__ boxes, unsigned char* __restrict__ scratch,
                              TableLayout L, int64_t N, bool per_sample, int device, BoxFault* fault) {
  const int64_t crop = blockIdx.x;
  CropTables<acc_t> tb(scratch, L, crop);
  __shared__ int64_t box[4];
  if (threadIdx.x == 0) {
    load_box(boxes, crop, N, !per_sample, L.H, L.W, true, device, fault, box);
    for (int q = 0; q < 4; ++q) tb.box[q] = box[q];
  }
  __syncthreads();
  const int64_t h = box[2], w = box[3];
  const int64_t rcap = reader_capacity(h, L.oh), ccap = reader_capacity(w, L.ow);
  for (int64_t s = threadIdx.x; s < h + w; s += blockDim.x) {
    if (s < h)
      tb.row_count[s] = reader_list<acc_t>(s, h, L.oh, tb.row_index + s * rcap, tb.row_weight + s * rcap);
    else
      tb.col_count[s - h] = reader_list<acc_t>(s - h, w, L.ow, tb.col_index + (s - h) * ccap,
                                               tb.col_weight + (s - h) * ccap);
  }
}

template <typename scalar_t, int VEC>
__global__ void backward_kernel(const scalar_t* __restrict__ g, const unsigned char* __restrict__ scratch,
                                scalar_t* __restrict__ gx, int64_t total, TableLayout L, int64_t N,
                                int64_t C, bool per_sample) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = L.H, W = L.W, oh = L.oh, ow = L.ow;
  for (int64_t e0 = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * VEC; e0 < total;
       e0 += int64_t(gridDim.x) * blockDim.x * VEC) {
    Pack<scalar_t, VEC> pack;
    // Coordinates of the first element, then stepped (no divisions per element).
    int64_t k = e0 % W, r = (e0 / W) % H, c = (e0 / (W * H)) % C, b = e0 / (W * H * C);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      if (v > 0 && ++k == W) {
        k = 0;
        if (++r == H) {
          r = 0;
          if (++c == C) {
            c = 0;
            ++b;
          }
        }
      }
      if (e0 + v >= total) break;
      acc_t sum = acc_t(0);
      for (int64_t n = 0; n < N; ++n) {
        const CropTables<acc_t> tb(const_cast<unsigned char*>(scratch), L, per_sample ? b * N + n : n);
        const int64_t t = tb.box[0], l = tb.box[1], h = tb.box[2], w = tb.box[3];
        if (r < t || r >= t + h || k < l || k >= l + w) continue;
        const int64_t rr = r - t, kk = k - l;
        const int64_t rcap = reader_capacity(h, oh), ccap = reader_capacity(w, ow);
        const scalar_t* gplane = g + ((b * N + n) * C + c) * oh * ow;
        sum += input_grad_from_tables<scalar_t, acc_t>(gplane, ow, tb.row_index + rr * rcap,
                                                       tb.row_weight + rr * rcap, tb.row_count[rr],
                                                       tb.col_index + kk * ccap, tb.col_weight + kk * ccap,
                                                       tb.col_count[kk]);
      }
      pack.v[v] = static_cast<scalar_t>(sum);
    }
    if (e0 + VEC <= total) {
      *reinterpret_cast<Pack<scalar_t, VEC>*>(gx + e0) = pack;
    } else {
      for (int v = 0; v < VEC && e0 + v < total; ++v) gx[e0 + v] = pack.v[v];
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ------------------------------------------------------------------------------------------
// Entries.

at::Tensor crop_resize_cuda(const at::Tensor& x_in, const at::Tensor& boxes_in, int64_t out_h,
                            int64_t out_w) {
  check_forward_meta(x_in, boxes_in, out_h, out_w, /*allow_cpu_boxes=*/true);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "crop_resize: x is on ", x_in.device(), " but boxes are on ",
                    boxes_in.device(), "; put both on one device");
  raise_pending_fault();
  if (boxes_in.is_cpu()) check_box_values("crop_resize", boxes_in, x_in.size(2), x_in.size(3));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = boxes_in.size(-2);
  at::Tensor y = at::empty({B, N, C, out_h, out_w}, x.options());
  if (y.numel() == 0) return y;
  TORCH_CHECK_VALUE(C * out_h * out_w < int64_t(1) << 31, "crop_resize: one crop's output (C * out_h * out_w = ",
                    C * out_h * out_w, ") must have fewer than 2^31 elements on CUDA");
  const at::Tensor boxes = device_boxes(boxes_in, x);
  BoxFault* fault = fault_for_kernels();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int device = x.device().index();
  const int64_t slab = C * out_h * out_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_resize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = (out_h + out_w) * (2 * sizeof(int64_t) + 2 * sizeof(acc_t));
    TORCH_CHECK_VALUE(smem <= 48 * 1024, "crop_resize: output size (", out_h, ", ", out_w,
                      ") too large for the CUDA kernel's tap tables");
    constexpr int V = vec_width<scalar_t>();
    // Each block covers ~8 vectors per thread of one crop's slab: enough work to amortise its
    // tap tables, and B * N * tiles blocks to fill the GPU.
    const bool vec = slab % V == 0 && aligned16(y.data_ptr());
    const int64_t tile = int64_t(kThreads) * (vec ? V : 1) * 8;
    const int64_t tiles = (slab + tile - 1) / tile;
    const int64_t grid = B * N * tiles;
    TORCH_CHECK(grid <= int64_t(2147483647), "crop_resize: too many CUDA blocks (", grid, ")");
    if (vec)
      forward_kernel<scalar_t, V><<<grid, kThreads, smem, stream>>>(
          x.data_ptr<scalar_t>(), boxes.data_ptr<int64_t>(), y.data_ptr<scalar_t>(), N, C, H, W, out_h,
          out_w, boxes.dim() == 3, tiles, tile, device, fault);
    else
      forward_kernel<scalar_t, 1><<<grid, kThreads, smem, stream>>>(
          x.data_ptr<scalar_t>(), boxes.data_ptr<int64_t>(), y.data_ptr<scalar_t>(), N, C, H, W, out_h,
          out_w, boxes.dim() == 3, tiles, tile, device, fault);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad_in, const at::Tensor& boxes_in,
                                     int64_t in_h, int64_t in_w) {
  check_backward_meta(grad_in, boxes_in, in_h, in_w, /*allow_cpu_boxes=*/true);
  TORCH_CHECK_VALUE(grad_in.is_cuda(), "crop_resize_backward: grad is on ", grad_in.device(),
                    " but boxes are on ", boxes_in.device(), "; put both on one device");
  raise_pending_fault();
  if (boxes_in.is_cpu()) check_box_values("crop_resize_backward", boxes_in, in_h, in_w);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor g = grad_in.contiguous();
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), oh = g.size(3), ow = g.size(4);
  at::Tensor gx = at::empty({B, C, in_h, in_w}, g.options());
  const int64_t total = gx.numel();
  if (total == 0) return gx;
  if (g.numel() == 0) return gx.zero_();
  const at::Tensor boxes = device_boxes(boxes_in, g);
  BoxFault* fault = fault_for_kernels();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int device = g.device().index();
  const bool per_sample = boxes.dim() == 3;
  const int64_t crops = per_sample ? B * N : N;
  const TableLayout L(in_h, in_w, oh, ow);
  at::Tensor scratch = at::empty({crops * L.bytes_per_crop}, g.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "crop_resize_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    tables_kernel<acc_t><<<crops, 128, 0, stream>>>(boxes.data_ptr<int64_t>(), scratch.data_ptr<uint8_t>(), L,
                                                    N, per_sample, device, fault);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int V = vec_width<scalar_t>();
    const bool vec = total % V == 0 && aligned16(gx.data_ptr());
    if (vec)
      backward_kernel<scalar_t, V><<<blocks_for((total + V - 1) / V), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), scratch.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), total, L, N, C, per_sample);
    else
      backward_kernel<scalar_t, 1><<<blocks_for(total), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), scratch.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), total, L, N, C, per_sample);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

std::string take_box_error() { return take_fault(); }

}  // namespace
}  // namespace hfcn

TORCH_LIBRARY_FRAGMENT(hfcn_bench, m) {
  // The message of a bad CUDA box found by the kernels since the last call ("" if none), and
  // clears it. hfcn_bench.ops.raise_device_box_error synchronises first, then raises it.
  m.def("take_box_error() -> str", &hfcn::take_box_error);
}

TORCH_LIBRARY_IMPL(hfcn_bench, CUDA, m) {
  m.impl("crop_resize", &hfcn::crop_resize_cuda);
  m.impl("crop_resize_backward", &hfcn::crop_resize_backward_cuda);
}
