#pragma once

/// \file
/// A pool's metrics in the Prometheus text exposition format (version
/// 0.0.4), under OpenTelemetry's semantic-convention names for database
/// client connection pools, mapped to Prometheus names as OpenTelemetry's
/// Prometheus compatibility rules do (dots become underscores, the unit `s`
/// becomes the suffix `_seconds`, a unit in braces such as `{connection}` is
/// dropped, a monotonic counter gets `_total`):
///
/// | OpenTelemetry (instrument, unit)                          | Prometheus                                   | from |
/// |-----------------------------------------------------------|----------------------------------------------|------|
/// | `db.client.connection.count` (UpDownCounter, `{connection}`), `db.client.connection.state` = `idle` / `used` | `db_client_connection_count` | `stats()` |
/// | `db.client.connection.idle.max` (UpDownCounter)            | `db_client_connection_idle_max`              | overflow policy's `keep_idle()` |
/// | `db.client.connection.idle.min` (UpDownCounter)            | `db_client_connection_idle_min`              | recycling policy's `idle_floor()` |
/// | `db.client.connection.max` (UpDownCounter)                 | `db_client_connection_max`                   | overflow policy's `max_size()` |
/// | `db.client.connection.pending_requests` (UpDownCounter)    | `db_client_connection_pending_requests`      | `stats().waiting` |
/// | `db.client.connection.timeouts` (Counter, `{timeout}`)     | `db_client_connection_timeouts_total`        | `counters` |
/// | `db.client.connection.create_time` (Histogram, `s`)        | `db_client_connection_create_time_seconds`   | `histograms` |
/// | `db.client.connection.wait_time` (Histogram, `s`)          | `db_client_connection_wait_time_seconds`     | `histograms` |
/// | `db.client.connection.use_time` (Histogram, `s`)           | `db_client_connection_use_time_seconds`      | `histograms` |
///
/// Every series carries the label `db_client_connection_pool_name` (the
/// attribute `db.client.connection.pool.name`) with the name the caller
/// gives (escaped; a byte that is not part of well-formed UTF-8 becomes
/// U+FFFD, since the format is UTF-8). pqpool's own metrics beside them: `pqpool_connection_opening`
/// (connects in progress), `pqpool_invalidations_total` (`stats().epoch`),
/// and with `counters`, `pqpool_events_total{event=…}` and
/// `pqpool_connections_closed_total{reason=…}`; with `observability::tls`,
/// `pqpool_tls_server_certificate_expiry_seconds` (time left until the
/// server certificate's notAfter; negative once expired) and
/// `pqpool_tls_connection_info{protocol=…,cipher=…} 1`, both labelled with
/// `server_address` and `server_port`.
///
/// The series come from whatever the pool's observability policy holds
/// (itself or the members of a `combine`): `stats()` and the policies'
/// numbers are always there; the timeouts and event counts need `counters`,
/// the three histograms `histograms`, the TLS facts `observability::tls`.
/// A histogram's buckets are the powers of two of nanoseconds from 2^7 ns
/// to 2^43 ns (128 ns to about 2.4 h), each count exact (`log_histogram`).
///
/// `db_client_connection_count` is declared `untyped` rather than `gauge`:
/// the name OpenTelemetry's rules give it ends in `_count`, which Prometheus's
/// linter (`promtool check metrics`) reserves for histograms and summaries;
/// Prometheus stores an untyped series as it stores a gauge.
///
/// Several pools go into one exposition (`prometheus_exposition::add` per
/// pool): each metric's HELP and TYPE come once, with every pool's series
/// under it. The output passes `promtool check metrics`.

#include <pqpool/histogram.hpp>
#include <pqpool/policies/observability.hpp>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace pqpool {

namespace observability {
class tls; // <pqpool/observability/tls.hpp>
} // namespace observability

namespace detail {

// Is T the policy P, or a member of the combine P?
template <class T, class P>
constexpr bool observer_has() noexcept {
    if constexpr (std::is_same_v<T, P>)
        return true;
    else if constexpr (requires { P::template has<T>; })
        return P::template has<T>;
    else
        return false;
}

} // namespace detail

/// Metrics of one or more pools, collected now, for one scrape.
class prometheus_exposition {
public:
    /// Adds `pool`'s metrics, labelled `db_client_connection_pool_name="pool_name"`.
    /// Reads `stats()` (one lock) and the observability policy (relaxed
    /// loads); throws what `stats()` throws (`closed_error` for a moved-from pool).
    template <class Pool>
    prometheus_exposition& add(const Pool& pool, std::string_view pool_name) {
        using obs_type = typename Pool::observability_policy_type;
        const auto s = pool.stats();
        const std::string pool_label = label("db_client_connection_pool_name", pool_name);

        family& count =
            get("db_client_connection_count",
                "The number of connections that are currently in state described by the state attribute.", "untyped");
        sample(count, "", pool_label + "," + label("db_client_connection_state", "idle"), s.idle);
        sample(count, "", pool_label + "," + label("db_client_connection_state", "used"), s.in_use);
        sample(get("db_client_connection_idle_max", "The maximum number of idle open connections allowed.", "gauge"),
               "", pool_label, pool.overflow().keep_idle());
        sample(get("db_client_connection_idle_min", "The minimum number of idle open connections allowed.", "gauge"),
               "", pool_label, pool.recycling().idle_floor());
        sample(get("db_client_connection_max", "The maximum number of open connections allowed.", "gauge"), "",
               pool_label, pool.overflow().max_size());
        sample(get("db_client_connection_pending_requests",
                   "The number of current pending requests for an open connection.", "gauge"),
               "", pool_label, s.waiting);
        sample(get("pqpool_connection_opening", "Connects in progress (parked ones included).", "gauge"), "",
               pool_label, s.opening);
        sample(get("pqpool_invalidations_total",
                   "Times the pool learned that its server went away or changed role and retired every older "
                   "connection.",
                   "counter"),
               "", pool_label, s.epoch);

        const obs_type& obs = pool.observer();
        if constexpr (detail::observer_has<observability::counters, obs_type>()) {
            const auto& c = *detail::find_observer<observability::counters>(obs);
            sample(get("db_client_connection_timeouts_total",
                       "The number of connection timeouts that have occurred trying to obtain a connection from the "
                       "pool.",
                       "counter"),
                   "", pool_label, c.count(event::timeout));
            family& events = get("pqpool_events_total", "Pool events by kind.", "counter");
            for (std::size_t i = 0; i < event_count; ++i) {
                const auto e = static_cast<event>(i);
                sample(events, "", pool_label + "," + label("event", to_string(e)), c.count(e));
            }
            family& closed = get("pqpool_connections_closed_total", "Connections closed, by reason.", "counter");
            for (std::size_t i = 1; i < close_reason_count; ++i) {
                const auto r = static_cast<close_reason>(i);
                sample(closed, "", pool_label + "," + label("reason", to_string(r)), c.closed(r));
            }
        }
        if constexpr (detail::observer_has<observability::histograms, obs_type>()) {
            const auto& h = *detail::find_observer<observability::histograms>(obs);
            histogram(get("db_client_connection_create_time_seconds", "The time it took to create a new connection.",
                          "histogram"),
                      pool_label, h.connect());
            histogram(get("db_client_connection_wait_time_seconds",
                          "The time it took to obtain an open connection from the pool.", "histogram"),
                      pool_label, h.wait());
            histogram(get("db_client_connection_use_time_seconds",
                          "The time between borrowing a connection and returning it to the pool.", "histogram"),
                      pool_label, h.hold());
        }
        add_tls<obs_type>(obs, pool_label);
        return *this;
    }

    /// Writes the exposition (UTF-8, `text/plain; version=0.0.4`).
    void write(std::ostream& os) const {
        const std::string s = str();
        os.write(s.data(), static_cast<std::streamsize>(s.size()));
    }

    /// The exposition as text.
    std::string str() const {
        std::string out;
        for (const family& f : families_) {
            out += "# HELP " + f.name + " " + f.help + "\n";
            out += "# TYPE " + f.name + " " + f.type + "\n";
            out += f.samples;
        }
        return out;
    }

private:
    struct family {
        std::string name, help, type, samples;
    };

    family& get(std::string_view name, std::string_view help, std::string_view type) {
        for (family& f : families_)
            if (f.name == name) return f;
        families_.push_back({std::string(name), std::string(help), std::string(type), {}});
        return families_.back();
    }

    // `name="value"`, escaped as the text format wants. The format is UTF-8:
    // a byte that does not belong to a well-formed UTF-8 sequence (a name in
    // Latin-1) becomes U+FFFD, or Prometheus would reject the whole scrape.
    static std::string label(std::string_view name, std::string_view value) {
        std::string out(name);
        out += "=\"";
        for (std::size_t i = 0; i < value.size();) {
            const char c = value[i];
            if (const std::size_t n = utf8_length(value.substr(i)); n > 1) {
                out += value.substr(i, n);
                i += n;
                continue;
            } else if (n == 0) {
                out += "\xEF\xBF\xBD"; // U+FFFD REPLACEMENT CHARACTER
            } else if (c == '\\') {
                out += "\\\\";
            } else if (c == '"') {
                out += "\\\"";
            } else if (c == '\n') {
                out += "\\n";
            } else {
                out += c;
            }
            ++i;
        }
        out += '"';
        return out;
    }

    // The length of the well-formed UTF-8 sequence `s` starts with (RFC 3629:
    // no overlong form, no surrogate, nothing above U+10FFFF); 0 when it
    // starts with none.
    static std::size_t utf8_length(std::string_view s) noexcept {
        const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
        const unsigned char b = byte(0);
        if (b < 0x80) return 1;
        std::size_t n;
        unsigned char lo = 0x80, hi = 0xBF; // the range of the second byte
        if (b >= 0xC2 && b <= 0xDF)
            n = 2;
        else if (b >= 0xE0 && b <= 0xEF) {
            n = 3;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            n = 4;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else
            return 0;
        if (s.size() < n || byte(1) < lo || byte(1) > hi) return 0;
        for (std::size_t i = 2; i < n; ++i)
            if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
        return n;
    }

    static std::string number(std::uint64_t v) { return std::to_string(v); }
    static std::string number(std::int64_t v) { return std::to_string(v); }
    static std::string number(double v) {
        char buf[64];
        const auto r = std::to_chars(buf, buf + sizeof buf, v);
        return std::string(buf, r.ptr);
    }
    static std::string seconds(std::chrono::nanoseconds d) { return number(static_cast<double>(d.count()) / 1e9); }

    template <class N>
    void sample(family& f, std::string_view suffix, const std::string& labels, N value) {
        f.samples += f.name;
        f.samples += suffix;
        f.samples += '{';
        f.samples += labels;
        f.samples += "} ";
        if constexpr (std::is_same_v<N, std::string>)
            f.samples += value;
        else if constexpr (std::is_floating_point_v<N>)
            f.samples += number(static_cast<double>(value));
        else if constexpr (std::is_signed_v<N>)
            f.samples += number(static_cast<std::int64_t>(value));
        else
            f.samples += number(static_cast<std::uint64_t>(value));
        f.samples += '\n';
    }

    void histogram(family& f, const std::string& labels, const log_histogram& h) {
        const log_histogram::snapshot s = h.read();
        for (unsigned e = log_histogram::min_exponent; e <= log_histogram::max_exponent; ++e) {
            const std::chrono::nanoseconds edge{std::int64_t{1} << e};
            sample(f, "_bucket", labels + "," + label("le", seconds(edge)), s.count_at_most(edge));
        }
        const std::uint64_t n = s.count();
        sample(f, "_bucket", labels + "," + label("le", "+Inf"), n);
        sample(f, "_sum", labels, seconds(s.sum()));
        sample(f, "_count", labels, n);
    }

    // The TLS facts, when the policy holds an observability::tls (its header
    // is included wherever such a pool is named).
    template <class Obs, class Tls = observability::tls>
    void add_tls(const Obs& obs, const std::string& pool_label) {
        if constexpr (detail::observer_has<Tls, Obs>()) {
            const Tls& t = *detail::find_observer<Tls>(obs);
            const auto now = std::chrono::system_clock::now();
            for (const auto& f : t.servers()) {
                const std::string labels = pool_label + "," + label("server_address", f.server_address) + "," +
                                           label("server_port", f.server_port);
                sample(get("pqpool_tls_connection_info", "TLS of the last connection opened to each server (value 1).",
                           "gauge"),
                       "",
                       labels + "," + label("protocol", f.protocol) + "," + label("cipher", f.cipher) + "," +
                           label("library", f.library),
                       std::uint64_t{1});
                if (const auto left = f.certificate_expires_in(now))
                    sample(get("pqpool_tls_server_certificate_expiry_seconds",
                               "Seconds until the server certificate of the last connection to each server expires "
                               "(negative: expired).",
                               "gauge"),
                           "", labels, static_cast<std::int64_t>(left->count()));
            }
        } else {
            (void)obs, (void)pool_label;
        }
    }

    std::vector<family> families_;
};

/// Writes one pool's metrics in the Prometheus text exposition format (see
/// the file's documentation), labelled with `pool_name`.
template <class Pool>
void write_prometheus(std::ostream& os, const Pool& pool, std::string_view pool_name) {
    prometheus_exposition().add(pool, pool_name).write(os);
}

} // namespace pqpool
