// Antialiased bicubic resize of 8-bit RGB, bit-exact with torch's uint8 kernel (image_resize.h says which one).
#include "image/image_resize.h"

#include <algorithm>
#include <cmath>

namespace dg {
namespace {

// Keys' cubic convolution kernel with a = -0.5 (PIL's and torch's choice when antialiasing). The expressions are
// written in torch's order of operations: the weights are rounded to int16 later, and a different rounding of a
// double here could move one of them by one unit.
double cubic(double x) {
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) {
        return ((a + 2) * x - (a + 3)) * x * x + 1;
    }
    if (x < 2.0) {
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
    }
    return 0.0;
}

// The filter of one axis: for each output sample, the first input sample it reads, how many, and their weights.
// Weights are recomputed per output sample (cheap) rather than tabled: a 1 x 2^25 image would need a table of
// hundreds of MB along its long side.
class AxisFilter {
  public:
    AxisFilter(int64_t in_size, int64_t out_size) : in_size_(in_size) {
        scale_ = static_cast<double>(in_size) / static_cast<double>(out_size);
        // Bicubic reads 4 samples at scale 1; shrinking widens the support by the scale (that is the antialias).
        support_ = scale_ >= 1.0 ? 2.0 * scale_ : 2.0;
        inv_scale_ = scale_ >= 1.0 ? 1.0 / scale_ : 1.0;
        max_taps_ = static_cast<int64_t>(std::ceil(support_)) * 2 + 1;
        scratch_.resize(static_cast<size_t>(max_taps_));

        // One precision for the whole pass: the most fractional bits that keep the largest weight, doubled, below
        // 2^15 (torch's rule, capped at 22 bits).
        double w_max = 0.0;
        for (int64_t i = 0; i < out_size; ++i) {
            int64_t first = 0;
            const int64_t n = float_taps(i, &first);
            for (int64_t k = 0; k < n; ++k) {
                w_max = std::max(w_max, scratch_[static_cast<size_t>(k)]);
            }
        }
        precision_ = 0;
        while (precision_ < 22 && static_cast<int>(0.5 + w_max * (1 << (precision_ + 1))) < (1 << 15)) {
            ++precision_;
        }
    }

    int precision() const { return precision_; }
    int64_t max_taps() const { return max_taps_; }

    // The int16 weights of output sample i into `weights` (room for max_taps()); sets *first, returns the count.
    int64_t taps(int64_t i, int16_t * weights, int64_t * first) {
        const int64_t n = float_taps(i, first);
        const double unit = static_cast<double>(1 << precision_);
        for (int64_t k = 0; k < n; ++k) {
            const double v = scratch_[static_cast<size_t>(k)] * unit;
            weights[k] = static_cast<int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
        }
        return n;
    }

  private:
    // The normalised double weights of output sample i into scratch_; the first input sample in *first.
    int64_t float_taps(int64_t i, int64_t * first) {
        const double center = scale_ * (static_cast<double>(i) + 0.5);
        // Truncation toward zero, as torch's int64 casts; a negative start is clamped to 0 either way.
        const int64_t lo = std::max(static_cast<int64_t>(center - support_ + 0.5), int64_t{0});
        const int64_t hi = std::min(static_cast<int64_t>(center + support_ + 0.5), in_size_);
        // Rounding can make the window one longer than max_taps_; torch clips it, so do we.
        const int64_t n = std::clamp(hi - lo, int64_t{0}, max_taps_);
        double total = 0.0;
        for (int64_t k = 0; k < n; ++k) {
            const double w = cubic((static_cast<double>(k + lo) - center + 0.5) * inv_scale_);
            scratch_[static_cast<size_t>(k)] = w;
            total += w;
        }
        if (total != 0.0) {
            for (int64_t k = 0; k < n; ++k) {
                scratch_[static_cast<size_t>(k)] /= total;
            }
        }
        *first = lo;
        return n;
    }

    int64_t in_size_;
    double scale_ = 1.0;
    double support_ = 2.0;
    double inv_scale_ = 1.0;
    int64_t max_taps_ = 0;
    int precision_ = 0;
    std::vector<double> scratch_;
};

// Resamples one axis. The image is a set of `n_lines` lines of RGB samples: sample k of line l starts at
// l * line_stride + k * sample_stride (in bytes), in `src` and `dst` alike with their own strides. The width pass
// has lines = rows, the height pass lines = columns.
struct AxisLayout {
    int64_t n_lines;
    int64_t src_line_stride, src_sample_stride;
    int64_t dst_line_stride, dst_sample_stride;
};

void resample_axis(const uint8_t * src, int64_t in_size, uint8_t * dst, int64_t out_size, const AxisLayout & at) {
    AxisFilter filter(in_size, out_size);
    std::vector<int16_t> weights(static_cast<size_t>(filter.max_taps()));
    const int shift = filter.precision();
    const int64_t half = int64_t{1} << (shift - 1);  // adds 0.5 before the shift: round half up
    for (int64_t i = 0; i < out_size; ++i) {
        int64_t first = 0;
        const int64_t n = filter.taps(i, weights.data(), &first);
        for (int64_t l = 0; l < at.n_lines; ++l) {
            const uint8_t * in = src + l * at.src_line_stride + first * at.src_sample_stride;
            uint8_t * out = dst + l * at.dst_line_stride + i * at.dst_sample_stride;
            for (int c = 0; c < 3; ++c) {
                // torch sums in int32; int64 gives the same sums (they stay below 2^31: 255 * ~1.1 * 2^22 at most).
                int64_t acc = half;
                for (int64_t k = 0; k < n; ++k) {
                    acc += static_cast<int64_t>(in[k * at.src_sample_stride + c]) * weights[static_cast<size_t>(k)];
                }
                // >> on a negative sum floors, as torch's arithmetic shift does; then clamp to a byte.
                out[c] = static_cast<uint8_t>(std::clamp<int64_t>(acc >> shift, 0, 255));
            }
        }
    }
}

}  // namespace

std::vector<uint8_t> resize_rgb_bicubic_aa(const uint8_t * rgb, int64_t width, int64_t height, int64_t out_width,
                                           int64_t out_height) {
    // Width first, as torch does: the order changes where the intermediate result is rounded to bytes.
    std::vector<uint8_t> wide;
    const uint8_t * src = rgb;
    if (out_width != width) {
        wide.resize(static_cast<size_t>(out_width * height * 3));
        resample_axis(rgb, width, wide.data(), out_width, {height, width * 3, 3, out_width * 3, 3});
        src = wide.data();
    }
    if (out_height == height) {
        return wide.empty() ? std::vector<uint8_t>(rgb, rgb + width * height * 3) : wide;
    }
    std::vector<uint8_t> out(static_cast<size_t>(out_width * out_height * 3));
    resample_axis(src, height, out.data(), out_height, {out_width, 3, out_width * 3, 3, out_width * 3});
    return out;
}

}  // namespace dg
