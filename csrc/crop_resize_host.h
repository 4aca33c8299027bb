// Host-side argument checks shared by the CPU and CUDA entries of hfcn_bench::crop_resize.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace hfcn {

// Checks x (4-D), boxes (int64, [N, 4] or [B, N, 4], same device as x) and that every window
// (top, left, height, width) lies inside an in_h x in_w map with a positive size. The messages
// match hfcn_bench.ops.boxes.check_boxes, so the reference fallback rejects the same input.
inline void check_crop_args(const char* op, const at::Tensor& maps, int64_t batch, int64_t in_h,
                            int64_t in_w, const at::Tensor& boxes) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kLong, op,
                   ": boxes must be int64 (top, left, height, width), got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == maps.device(), op, ": x is on ", maps.device(),
                    " but boxes are on ", boxes.device(), "; put both on one device");
  const bool shared = boxes.dim() == 2 && boxes.size(1) == 4;
  const bool per_sample = boxes.dim() == 3 && boxes.size(0) == batch && boxes.size(2) == 4;
  TORCH_CHECK_VALUE(shared || per_sample, op, ": boxes must have shape [N, 4] or [B=", batch,
                    ", N, 4], got ", boxes.sizes());
  const at::Tensor b = boxes.to(at::kCPU).contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  const int64_t n = boxes.size(-2);
  const int64_t total = b.numel() / 4;
  for (int64_t k = 0; k < total; ++k) {
    const int64_t t = p[4 * k], l = p[4 * k + 1], h = p[4 * k + 2], w = p[4 * k + 3];
    if (h < 1 || w < 1 || t < 0 || l < 0 || t + h > in_h || l + w > in_w) {
      const std::string where = shared ? "box " + std::to_string(k % n)
                                       : "box [" + std::to_string(k / n) + ", " +
                                             std::to_string(k % n) + "]";
      TORCH_CHECK_VALUE(false, op, ": ", where, " (top=", t, ", left=", l, ", height=", h,
                        ", width=", w, ") does not fit a ", in_h, "x", in_w,
                        " feature map: it needs height, width >= 1 and 0 <= top, top + height <= ",
                        in_h, ", 0 <= left, left + width <= ", in_w);
    }
  }
}

inline void check_forward_args(const at::Tensor& x, const at::Tensor& boxes, int64_t out_h,
                               int64_t out_w) {
  TORCH_CHECK_VALUE(x.dim() == 4, "crop_resize: x must be 4-D [B, C, H, W], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, "crop_resize: output size must be positive, got (",
                    out_h, ", ", out_w, ")");
  check_crop_args("crop_resize", x, x.size(0), x.size(2), x.size(3), boxes);
}

inline void check_backward_args(const at::Tensor& grad, const at::Tensor& boxes, int64_t in_h,
                                int64_t in_w) {
  TORCH_CHECK_VALUE(grad.dim() == 5, "crop_resize_backward: grad must be 5-D [B, N, C, oh, ow], got shape ",
                    grad.sizes());
  TORCH_CHECK_VALUE(in_h >= 1 && in_w >= 1,
                    "crop_resize_backward: input size must be positive, got (", in_h, ", ", in_w, ")");
  check_crop_args("crop_resize_backward", grad, grad.size(0), in_h, in_w, boxes);
  TORCH_CHECK_VALUE(grad.size(1) == boxes.size(-2), "crop_resize_backward: grad has ", grad.size(1),
                    " crops but boxes have ", boxes.size(-2));
}

}  // namespace hfcn
