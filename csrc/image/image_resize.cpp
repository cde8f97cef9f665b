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

    // The input samples [*first, *first + count) that output sample i reads; returns the count.
    int64_t window(int64_t i, int64_t * first) const {
        const double center = scale_ * (static_cast<double>(i) + 0.5);
        // Truncation toward zero, as torch's int64 casts; a negative start is clamped to 0 either way.
        const int64_t lo = std::max(static_cast<int64_t>(center - support_ + 0.5), int64_t{0});
        const int64_t hi = std::min(static_cast<int64_t>(center + support_ + 0.5), in_size_);
        *first = lo;
        // Rounding can make the window one longer than max_taps_; torch clips it, so do we.
        return std::clamp(hi - lo, int64_t{0}, max_taps_);
    }

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
        const int64_t n = window(i, first);
        const int64_t lo = *first;
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

// The integer sum of one output sample as a byte. Sums start at half a unit (1 << (shift - 1)), so the shift rounds
// half up; >> on a negative sum floors, as torch's arithmetic shift does; then clamp. The sums fit int32 as torch's
// do: the positive weights of a normalised kernel add up to at most ~1.09, so |sum| < 255 * 1.09 * 2^22 < 2^31.
inline uint8_t to_byte(int32_t sum, int shift) {
    return static_cast<uint8_t>(std::clamp(sum >> shift, 0, 255));
}

// The width pass over rows [y0, y1) of `src` (rows of in_w RGB pixels) into `dst` (rows of out_w, from row y0).
// Output columns outermost, so each column's weights are computed once per call.
void width_pass(AxisFilter & filter, const uint8_t * src, int64_t in_w, int64_t y0, int64_t y1, uint8_t * dst,
                int64_t out_w) {
    std::vector<int16_t> weights(static_cast<size_t>(filter.max_taps()));
    const int shift = filter.precision();
    for (int64_t x = 0; x < out_w; ++x) {
        int64_t first = 0;
        const int64_t n = filter.taps(x, weights.data(), &first);
        for (int64_t y = y0; y < y1; ++y) {
            const uint8_t * in = src + (y * in_w + first) * 3;
            int32_t r = 1 << (shift - 1), g = r, b = r;
            for (int64_t k = 0; k < n; ++k) {
                const int32_t w = weights[static_cast<size_t>(k)];
                r += in[3 * k + 0] * w;
                g += in[3 * k + 1] * w;
                b += in[3 * k + 2] * w;
            }
            uint8_t * out = dst + ((y - y0) * out_w + x) * 3;
            out[0] = to_byte(r, shift);
            out[1] = to_byte(g, shift);
            out[2] = to_byte(b, shift);
        }
    }
}

// The height pass for output rows [y0, y1) into `dst` (rows of row_bytes, from row y0); `src` holds the input rows
// from row src_first on. Each output row is a weighted sum of whole input rows, accumulated row by row: contiguous,
// so it stays fast when a tall strip has thousands of taps per row.
void height_pass(AxisFilter & filter, const uint8_t * src, int64_t src_first, int64_t y0, int64_t y1, uint8_t * dst,
                 int64_t row_bytes) {
    std::vector<int16_t> weights(static_cast<size_t>(filter.max_taps()));
    std::vector<int32_t> sums(static_cast<size_t>(row_bytes));
    const int shift = filter.precision();
    for (int64_t y = y0; y < y1; ++y) {
        int64_t first = 0;
        const int64_t n = filter.taps(y, weights.data(), &first);
        std::fill(sums.begin(), sums.end(), 1 << (shift - 1));
        for (int64_t k = 0; k < n; ++k) {
            const uint8_t * in = src + (first + k - src_first) * row_bytes;
            const int32_t w = weights[static_cast<size_t>(k)];
            for (int64_t i = 0; i < row_bytes; ++i) {
                sums[static_cast<size_t>(i)] += in[i] * w;
            }
        }
        uint8_t * out = dst + (y - y0) * row_bytes;
        for (int64_t i = 0; i < row_bytes; ++i) {
            out[i] = to_byte(sums[static_cast<size_t>(i)], shift);
        }
    }
}

// Output rows per band when both passes run (see resize_rgb_bicubic_aa).
constexpr int64_t kBandRows = 64;

}  // namespace

std::vector<uint8_t> resize_rgb_bicubic_aa(const uint8_t * rgb, int64_t width, int64_t height, int64_t out_width,
                                           int64_t out_height) {
    std::vector<uint8_t> out(static_cast<size_t>(out_width * out_height * 3));
    const int64_t row_bytes = out_width * 3;
    // Each pass has one precision for all its outputs, so its filter covers the whole axis even when run by bands.
    if (out_height == height) {
        AxisFilter width_filter(width, out_width);
        width_pass(width_filter, rgb, width, 0, height, out.data(), out_width);
        return out;
    }
    AxisFilter height_filter(height, out_height);
    if (out_width == width) {
        height_pass(height_filter, rgb, 0, 0, out_height, out.data(), row_bytes);
        return out;
    }
    // Width first, as torch does: the order changes where the intermediate result is rounded to bytes. torch keeps
    // the whole intermediate (height x out_width); a tall strip widened to one patch row would make that gigabytes
    // (1 x 2^25 -> 48 columns: 4.8 GB), so we make it band by band: the input rows that kBandRows output rows
    // read, then those output rows. Rows at a band's edges are computed twice, identically.
    AxisFilter width_filter(width, out_width);
    std::vector<uint8_t> band;
    for (int64_t y0 = 0; y0 < out_height; y0 += kBandRows) {
        const int64_t y1 = std::min(y0 + kBandRows, out_height);
        int64_t lo = height, hi = 0;  // the input rows the band reads
        for (int64_t y = y0; y < y1; ++y) {
            int64_t first = 0;
            const int64_t n = height_filter.window(y, &first);
            lo = std::min(lo, first);
            hi = std::max(hi, first + n);
        }
        band.resize(static_cast<size_t>(std::max<int64_t>(hi - lo, 0) * row_bytes));
        width_pass(width_filter, rgb, width, lo, hi, band.data(), out_width);
        height_pass(height_filter, band.data(), lo, y0, y1, out.data() + y0 * row_bytes, row_bytes);
    }
    return out;
}

}  // namespace dg
