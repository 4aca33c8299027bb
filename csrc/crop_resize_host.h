// Host-side argument checks shared by the CPU and CUDA entries of hfcn_bench::crop_resize.
//
// Two kinds of check, kept apart on purpose:
// - metadata (dtype, shape, device, sizes): free, done by every entry;
// - box *values* (check_box_values): they read the boxes, so they only ever see a CPU tensor.
//   The CUDA entry validates CPU boxes here and CUDA boxes on the device (crop_resize_cuda.cu):
//   reading CUDA boxes back would be a device-to-host copy and a stream synchronisation on
//   every forward and backward of a training step.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "crop_resize.h"

namespace hfcn {

// The one message for a window that does not fit, used by the host check and by the report of
// the device-side check, and mirrored by hfcn_bench.ops.boxes.check_boxes (the reference).
inline std::string box_error_message(const char* op, bool shared, int64_t k, int64_t n, int64_t t,
                                     int64_t l, int64_t h, int64_t w, int64_t in_h, int64_t in_w) {
  const std::string where =
      shared ? "box " + std::to_string(k % n)
             : "box [" + std::to_string(k / n) + ", " + std::to_string(k % n) + "]";
  return std::string(op) + ": " + where + " (top=" + std::to_string(t) + ", left=" +
         std::to_string(l) + ", height=" + std::to_string(h) + ", width=" + std::to_string(w) +
         ") does not fit a " + std::to_string(in_h) + "x" + std::to_string(in_w) +
         " feature map: it needs height, width >= 1 and 0 <= top, top + height <= " +
         std::to_string(in_h) + ", 0 <= left, left + width <= " + std::to_string(in_w);
}

// dtype and shape of boxes ([N, 4] shared by the batch or [B, N, 4] per sample), and where they
// live: on the device of `maps`, or (allow_cpu_boxes, the CUDA entry) on the CPU.
inline void check_box_meta(const char* op, const at::Tensor& maps, int64_t batch,
                           const at::Tensor& boxes, bool allow_cpu_boxes) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kLong, op,
                   ": boxes must be int64 (top, left, height, width), got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == maps.device() || (allow_cpu_boxes && boxes.is_cpu()), op,
                    ": x is on ", maps.device(), " but boxes are on ", boxes.device(),
                    "; put both on one device", allow_cpu_boxes ? " (or boxes on the CPU)" : "");
  const bool shared = boxes.dim() == 2 && boxes.size(1) == 4;
  const bool per_sample = boxes.dim() == 3 && boxes.size(0) == batch && boxes.size(2) == 4;
  TORCH_CHECK_VALUE(shared || per_sample, op, ": boxes must have shape [N, 4] or [B=", batch,
                    ", N, 4], got ", boxes.sizes());
}

// Every window (top, left, height, width) of CPU `boxes` lies inside an in_h x in_w map with a
// positive size; the error names the first one that does not.
inline void check_box_values(const char* op, const at::Tensor& boxes, int64_t in_h, int64_t in_w) {
  TORCH_INTERNAL_ASSERT(boxes.is_cpu(), op, ": box values are only read on the host");
  const at::Tensor b = boxes.contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  const int64_t n = boxes.size(-2);
  const int64_t total = b.numel() / 4;
  for (int64_t k = 0; k < total; ++k) {
    const int64_t t = p[4 * k], l = p[4 * k + 1], h = p[4 * k + 2], w = p[4 * k + 3];
    if (!box_fits(t, l, h, w, in_h, in_w))
      TORCH_CHECK_VALUE(false, box_error_message(op, boxes.dim() == 2, k, n, t, l, h, w, in_h, in_w));
  }
}

inline void check_forward_meta(const at::Tensor& x, const at::Tensor& boxes, int64_t out_h,
                               int64_t out_w, bool allow_cpu_boxes) {
  TORCH_CHECK_VALUE(x.dim() == 4, "crop_resize: x must be 4-D [B, C, H, W], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, "crop_resize: output size must be positive, got (",
                    out_h, ", ", out_w, ")");
  check_box_meta("crop_resize", x, x.size(0), boxes, allow_cpu_boxes);
  // No window fits an empty map; said here, before any kernel (a device-side clamp into a 0-wide
  // map would have nowhere to point).
  TORCH_CHECK_VALUE(boxes.size(-2) == 0 || (x.size(2) >= 1 && x.size(3) >= 1),
                    "crop_resize: x has an empty feature map (", x.size(2), "x", x.size(3),
                    "): no window fits it");
}

inline void check_backward_meta(const at::Tensor& grad, const at::Tensor& boxes, int64_t in_h,
                                int64_t in_w, bool allow_cpu_boxes) {
  TORCH_CHECK_VALUE(grad.dim() == 5, "crop_resize_backward: grad must be 5-D [B, N, C, oh, ow], got shape ",
                    grad.sizes());
  TORCH_CHECK_VALUE(in_h >= 1 && in_w >= 1,
                    "crop_resize_backward: input size must be positive, got (", in_h, ", ", in_w, ")");
  check_box_meta("crop_resize_backward", grad, grad.size(0), boxes, allow_cpu_boxes);
  TORCH_CHECK_VALUE(grad.size(1) == boxes.size(-2), "crop_resize_backward: grad has ", grad.size(1),
                    " crops but boxes have ", boxes.size(-2));
}

}  // namespace hfcn
