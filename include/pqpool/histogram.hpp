#pragma once

/// \file
/// `pqpool::log_histogram`: a lock-free histogram of durations in log-scale
/// buckets, readable at any time (the observability policies' latencies).

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace pqpool {

/// Durations counted in log-linear buckets: each power of two of nanoseconds
/// is split into 8 equal buckets, from 128 ns up to 2^43 ns (about 2.4 hours);
/// shorter durations share the first bucket, longer ones the last. A
/// percentile read from it is off by at most one bucket's width, 12.5% of
/// the value (for values from 128 ns up to 2^43 ns).
///
/// `record` is lock-free and wait-free: two relaxed atomic additions. Reads
/// may run at any time, concurrently with records; a read sees each record
/// whole or not at all in each bucket, and `snapshot()` gives one consistent
/// view to compute several figures from.
class log_histogram {
public:
    static constexpr unsigned sub_bits = 3;      ///< 2^3 = 8 buckets per power of two.
    static constexpr unsigned min_exponent = 7;  ///< The first bucket holds everything below 2^7 ns.
    static constexpr unsigned max_exponent = 43; ///< The last bucket holds everything from 2^43 ns.
    /// The number of buckets.
    static constexpr std::size_t bucket_count = (max_exponent - min_exponent) * (1u << sub_bits) + 2;

    /// A copy of the buckets, and what can be computed from them.
    struct snapshot {
        std::array<std::uint64_t, bucket_count> buckets{};
        std::uint64_t sum_ns = 0;

        /// How many durations were recorded.
        std::uint64_t count() const noexcept {
            std::uint64_t n = 0;
            for (auto b : buckets) n += b;
            return n;
        }
        /// Their sum.
        std::chrono::nanoseconds sum() const noexcept {
            return std::chrono::nanoseconds{static_cast<std::chrono::nanoseconds::rep>(sum_ns)};
        }
        /// How many were at most `bound`: exact when `bound` is a bucket edge
        /// (every power of two of nanoseconds from 2^7 to 2^43 is one);
        /// otherwise the count of the buckets whose upper edge is at most it.
        std::uint64_t count_at_most(std::chrono::nanoseconds bound) const noexcept {
            std::uint64_t n = 0;
            for (std::size_t i = 0; i < bucket_count && upper_edge(i) <= bound; ++i) n += buckets[i];
            return n;
        }
        /// The duration below which a fraction `q` (0 to 1) of the recorded
        /// ones fall, interpolated within its bucket; zero when empty.
        std::chrono::nanoseconds percentile(double q) const noexcept {
            const std::uint64_t n = count();
            if (n == 0) return std::chrono::nanoseconds{0};
            if (!(q > 0)) q = 0; // NaN too
            if (q > 1) q = 1;
            const double rank = q * static_cast<double>(n);
            std::uint64_t below = 0;
            for (std::size_t i = 0; i < bucket_count; ++i) {
                if (buckets[i] == 0) continue;
                if (static_cast<double>(below + buckets[i]) >= rank) {
                    if (i == bucket_count - 1) return lower_edge(i); // unbounded: its lower edge
                    const double lo = static_cast<double>(lower_edge(i).count());
                    const double hi = static_cast<double>(upper_edge(i).count());
                    const double within = (rank - static_cast<double>(below)) / static_cast<double>(buckets[i]);
                    return std::chrono::nanoseconds{
                        static_cast<std::chrono::nanoseconds::rep>(lo + (hi - lo) * within)};
                }
                below += buckets[i];
            }
            return lower_edge(bucket_count - 1);
        }
    };

    log_histogram() noexcept = default;
    /// Copies the counts as they are at this moment.
    log_histogram(const log_histogram& other) noexcept {
        for (std::size_t i = 0; i < bucket_count; ++i)
            buckets_[i].store(other.buckets_[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
        sum_ns_.store(other.sum_ns_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    log_histogram& operator=(const log_histogram&) = delete;

    /// Counts one duration (a negative one as zero). Two relaxed atomic additions.
    void record(std::chrono::nanoseconds d) noexcept {
        const std::uint64_t ns = d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
        buckets_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
        sum_ns_.fetch_add(ns, std::memory_order_relaxed);
    }

    /// The buckets now. O(bucket_count).
    snapshot read() const noexcept {
        snapshot s;
        for (std::size_t i = 0; i < bucket_count; ++i) s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
        s.sum_ns = sum_ns_.load(std::memory_order_relaxed);
        return s;
    }
    /// How many durations were recorded.
    std::uint64_t count() const noexcept { return read().count(); }
    /// Their sum.
    std::chrono::nanoseconds sum() const noexcept { return read().sum(); }
    /// See `snapshot::percentile`; `percentile(0.99)` is the p99.
    std::chrono::nanoseconds percentile(double q) const noexcept { return read().percentile(q); }

    /// The bucket a duration of `ns` nanoseconds falls in: bucket `i` holds
    /// the durations `d` with `lower_edge(i) < d <= upper_edge(i)` (bucket 0
    /// from zero on), so the count of durations at most an edge is exact, as
    /// Prometheus's `le` buckets want.
    static constexpr std::size_t bucket_of(std::uint64_t ns) noexcept {
        if (ns <= (std::uint64_t{1} << min_exponent)) return 0;
        const std::uint64_t v = ns - 1;
        const unsigned e = static_cast<unsigned>(std::bit_width(v)) - 1; // 2^e <= v < 2^(e+1)
        if (e >= max_exponent) return bucket_count - 1;
        const std::uint64_t sub = (v >> (e - sub_bits)) & ((1u << sub_bits) - 1);
        return 1 + (e - min_exponent) * (1u << sub_bits) + static_cast<std::size_t>(sub);
    }
    /// The edge below bucket `i` (its durations are above it; zero for bucket 0).
    static constexpr std::chrono::nanoseconds lower_edge(std::size_t i) noexcept {
        if (i == 0) return std::chrono::nanoseconds{0};
        const std::size_t k = i - 1;
        const unsigned e = min_exponent + static_cast<unsigned>(k >> sub_bits);
        const std::uint64_t sub = k & ((1u << sub_bits) - 1);
        return std::chrono::nanoseconds{
            static_cast<std::chrono::nanoseconds::rep>((std::uint64_t{1} << e) + (sub << (e - sub_bits)))};
    }
    /// The largest duration of bucket `i`; `nanoseconds::max()` for the last.
    static constexpr std::chrono::nanoseconds upper_edge(std::size_t i) noexcept {
        return i + 1 < bucket_count ? lower_edge(i + 1) : std::chrono::nanoseconds::max();
    }

private:
    std::array<std::atomic<std::uint64_t>, bucket_count> buckets_{};
    std::atomic<std::uint64_t> sum_ns_{0};
};

} // namespace pqpool
