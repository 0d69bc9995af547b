#pragma once

/// \file
/// `pqpool::observability::logfmt_writer`: writes one line per event to a
/// `std::ostream`, in logfmt (`key=value` pairs), for
/// `observability::sink<logfmt_writer>`.

#include <pqpool/detail/fork_aware_lock.hpp>
#include <pqpool/policies/observability.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <string_view>

namespace pqpool::observability {

/// A callable for `sink<logfmt_writer>` that writes each event as one line:
///
///     time=2025-03-01T12:00:00.123Z level=warn pool=main event=leak_suspected conn=3 uses=7 hold_ms=31000.000 where="/src/app.cpp:42"
///     time=2025-03-01T12:00:01.020Z level=info pool=main event=retired conn=2 uses=40 reason=lifetime age_ms=1799120.000
///     time=2025-03-01T12:00:02.511Z level=warn pool=main event=connect_failed sqlstate=28P01 transient=false connect_ms=41.203 error="pqpool: cannot connect to host=db …"
///
/// Keys: `time` (UTC, milliseconds), `level` (`warn` for failures,
/// timeouts, exhaustion, forks and leaks; `info` otherwise), `pool` (when
/// given a name), `event`, then whichever of `conn`, `uses`, `reason`,
/// `wait_ms`, `hold_ms`, `age_ms`, `connect_ms`, `backoff_ms`, `sqlstate`,
/// `transient`, `error`, `where` the event carries (see `event_info`).
/// Values with spaces, quotes or `=` are quoted, with `"` and `\` escaped and
/// line breaks written as `\n`. Error texts never hold a password (the
/// connector scrubs them).
///
/// It gets the rare events only (connects, failures, closes, timeouts,
/// leaks): a line per acquire would cost more than the acquire. For lease
/// events too, derive from it and declare
/// `static constexpr bool times_leases = true;`.
///
/// Each line is written with one `write` under a lock shared by the copies
/// of one writer, so lines from several threads never interleave (the lock
/// survives `fork()`; see `detail/fork_aware_lock.hpp`). A write blocks as
/// long as the stream does (stderr piped to a log collector that stalls):
/// the call that has an event to log (e.g. an `acquire_for` that timed out)
/// returns once its line is written, and other callers with a line to write
/// sleep on the lock meanwhile (they do not spin); callers with nothing to
/// log are not held up. The stream must
/// outlive the pool, and leases still out after the pool is gone (their
/// return may be logged). Writing does not flush (`std::clog`, the default,
/// is unbuffered).
class logfmt_writer {
public:
    static constexpr bool times_connects = true;

    /// Writes to `std::clog`, with no pool name.
    logfmt_writer() : logfmt_writer(std::clog) {}
    /// Writes to `os`; `pool_name`, when not empty, goes into every line as `pool=`.
    explicit logfmt_writer(std::ostream& os, std::string pool_name = {})
        : os_(&os),
          pool_(std::move(pool_name)),
          lock_(std::make_shared<detail::fork_aware_lock>()) {}

    template <class Handle>
    void operator()(const event_info<Handle>& e) const noexcept {
        try {
            std::string line = format(e, pool_, std::chrono::system_clock::now());
            line += '\n';
            std::lock_guard lock(*lock_);
            os_->write(line.data(), static_cast<std::streamsize>(line.size()));
        } catch (...) { // out of memory, or a stream that throws: the event is lost, the pool goes on
        }
    }

    /// The line for `e` (without its line break), as it would be written at `now`.
    template <class Handle>
    static std::string format(const event_info<Handle>& e, std::string_view pool_name,
                              std::chrono::system_clock::time_point now) {
        std::string out;
        out.reserve(160);
        out += "time=";
        append_time(out, now);
        out += " level=";
        out += warns(e.kind) ? "warn" : "info";
        if (!pool_name.empty()) append(out, "pool", pool_name);
        append(out, "event", to_string(e.kind));
        if (e.connection) append(out, "conn", std::to_string(e.connection));
        if (e.connection) append(out, "uses", std::to_string(e.uses));
        if (e.reason != close_reason::none) append(out, "reason", to_string(e.reason));
        append_ms(out, "wait_ms", e.wait);
        append_ms(out, "hold_ms", e.hold);
        append_ms(out, "age_ms", e.age);
        append_ms(out, "connect_ms", e.connect_time);
        append_ms(out, "backoff_ms", e.backoff);
        if (!e.sqlstate.empty()) append(out, "sqlstate", e.sqlstate);
        if (e.kind == event::connect_failed) append(out, "transient", e.transient ? "true" : "false");
        if (!e.error.empty()) append(out, "error", e.error);
        if (e.where) {
            std::string where = e.where->file_name();
            where += ':';
            where += std::to_string(e.where->line());
            append(out, "where", where);
        }
        return out;
    }

private:
    static constexpr bool warns(event k) noexcept {
        switch (k) {
        case event::connect_failed:
        case event::validation_failed:
        case event::timeout:
        case event::exhausted:
        case event::fork_detected:
        case event::leak_suspected:
        case event::leak_returned: return true;
        default: return false;
        }
    }

    static void append(std::string& out, std::string_view key, std::string_view value) {
        out += ' ';
        out += key;
        out += '=';
        bool quote = value.empty();
        for (char c : value)
            if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) quote = true;
        if (!quote) {
            out += value;
            return;
        }
        out += '"';
        for (char c : value) {
            switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20)
                    out += ' ';
                else
                    out += c;
            }
        }
        out += '"';
    }

    static void append_ms(std::string& out, std::string_view key, const std::optional<std::chrono::nanoseconds>& d) {
        if (!d) return;
        char buf[48];
        std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(d->count()) / 1e6);
        append(out, key, buf);
    }

    static void append_time(std::string& out, std::chrono::system_clock::time_point now) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
        const std::time_t secs = static_cast<std::time_t>(ms / 1000);
        std::tm tm{};
        ::gmtime_r(&secs, &tm);
        char buf[96]; // room for any int the fields could hold, so no truncation is possible
        std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                      tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
        out += buf;
    }

    std::ostream* os_;
    std::string pool_;
    std::shared_ptr<detail::fork_aware_lock> lock_;
};

} // namespace pqpool::observability
