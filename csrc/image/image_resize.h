// Resizing 8-bit RGB images exactly as torchvision does for HF's Gemma 4 image processor.
//
// HF's default (torchvision) backend calls resize(uint8 CHW tensor, BICUBIC, antialias=True). On the CPU that is
// torch's native uint8 path of _upsample_bicubic2d_aa: separable, the width first and then the height (a pass is
// skipped where that side keeps its size), each pass rounding to uint8. Per output sample the weights are PIL's
// antialiased bicubic filter (Keys' cubic, a = -0.5, stretched by the scale when shrinking), normalised in
// double, then turned into int16 with one fixed-point precision per pass; the sum is integer, rounded by adding
// half a unit, shifted and clamped to 0..255. This is bit-exact with torch (tests/test_image_preprocess.py).
#pragma once

#include <cstdint>
#include <vector>

namespace dg {

// `rgb` holds height rows of width RGB triples; returns out_height rows of out_width RGB triples. All sizes > 0.
std::vector<uint8_t> resize_rgb_bicubic_aa(const uint8_t * rgb, int64_t width, int64_t height, int64_t out_width,
                                           int64_t out_height);

}  // namespace dg
