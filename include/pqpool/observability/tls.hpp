#pragma once

/// \file
/// TLS facts for operators: the protocol and cipher of a pool's connections
/// and when the server's certificate expires, read with libpq
/// (`PQsslAttribute`) and OpenSSL (`PQsslStruct`), so that an expiring
/// certificate is an alert, not an incident. This header includes OpenSSL's
/// (link `OpenSSL::SSL`; `pqpool::pqpool` does).

#include <pqpool/detail/fork_aware_lock.hpp>
#include <pqpool/policies/observability.hpp>

#include <libpq-fe.h>
#include <openssl/asn1.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace pqpool {

/// What a TLS connection to one server looked like.
struct tls_facts {
    std::string server_address; ///< `PQhost`: the host name or address connected to.
    std::string server_port;    ///< `PQport`.
    std::string protocol;       ///< e.g. "TLSv1.3".
    std::string cipher;         ///< e.g. "TLS_AES_256_GCM_SHA384".
    std::string library;        ///< e.g. "OpenSSL".
    int key_bits = 0;           ///< The cipher's key length.
    /// The server certificate's notAfter, to the second (as certificates
    /// hold it); empty when the server sent none. In seconds, not in
    /// `system_clock`'s nanoseconds, which end in 2262: a certificate "with no
    /// well-defined expiration date" says 9999-12-31 (RFC 5280, 4.1.2.5).
    std::optional<std::chrono::sys_seconds> certificate_not_after;
    std::string certificate_subject;              ///< The certificate's subject, one line (e.g. "CN=db.example.com").
    std::chrono::system_clock::time_point seen{}; ///< When these were read (the connection's handshake).

    /// How long until the certificate expires (negative once it has); empty
    /// without a certificate.
    std::optional<std::chrono::seconds>
    certificate_expires_in(std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) const {
        if (!certificate_not_after) return std::nullopt;
        return *certificate_not_after - std::chrono::floor<std::chrono::seconds>(now);
    }
};

namespace detail {

inline std::string ssl_attribute(PGconn* conn, const char* name) {
    const char* v = PQsslAttribute(conn, name);
    return v ? std::string(v) : std::string();
}

// ASN1_TIME (UTCTime or GeneralizedTime, UTC: years 0 to 9999) to a time
// point in seconds, which holds them all.
inline std::optional<std::chrono::sys_seconds> asn1_time_point(const ASN1_TIME* t) {
    std::tm tm{};
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
    const auto day = std::chrono::year{tm.tm_year + 1900} / (tm.tm_mon + 1) / tm.tm_mday;
    if (!day.ok()) return std::nullopt;
    return std::chrono::sys_days{day} + std::chrono::hours{tm.tm_hour} + std::chrono::minutes{tm.tm_min} +
           std::chrono::seconds{tm.tm_sec};
}

} // namespace detail

/// The TLS facts of an open connection; empty when it does not use TLS (or
/// with a TLS library other than OpenSSL, only what `PQsslAttribute` gives).
/// Local state only: no I/O. Throws `std::bad_alloc`.
inline std::optional<tls_facts> read_tls_facts(PGconn* conn) {
    if (!conn || PQsslInUse(conn) != 1) return std::nullopt;
    tls_facts f;
    if (const char* h = PQhost(conn)) f.server_address = h;
    if (const char* p = PQport(conn)) f.server_port = p;
    f.protocol = detail::ssl_attribute(conn, "protocol");
    f.cipher = detail::ssl_attribute(conn, "cipher");
    f.library = detail::ssl_attribute(conn, "library");
    const std::string bits = detail::ssl_attribute(conn, "key_bits");
    f.key_bits = bits.empty() ? 0 : std::atoi(bits.c_str());
    f.seen = std::chrono::system_clock::now();
    if (auto* ssl = static_cast<SSL*>(PQsslStruct(conn, "OpenSSL"))) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        X509* cert = SSL_get1_peer_certificate(ssl);
#else
        X509* cert = SSL_get_peer_certificate(ssl);
#endif
        if (cert) {
            f.certificate_not_after = detail::asn1_time_point(X509_get0_notAfter(cert));
            if (char* subject = X509_NAME_oneline(X509_get_subject_name(cert), nullptr, 0)) {
                f.certificate_subject = subject;
                OPENSSL_free(subject);
                if (!f.certificate_subject.empty() && f.certificate_subject.front() == '/')
                    f.certificate_subject.erase(0, 1);
            }
            X509_free(cert);
        }
    }
    return f;
}

namespace observability {

/// Keeps the TLS facts of the last connection opened to each server (the
/// protocol, the cipher, the server certificate's expiry): read them with
/// `servers()`, or through the Prometheus exposition
/// (`pqpool_tls_server_certificate_expiry_seconds`). Facts are read from each
/// new connection right after its handshake, on the `connected` event: no
/// I/O, a few libpq and OpenSSL calls per connect; nothing on acquire or
/// release. Only for pools of `libpq_connector`; with another connector it
/// records nothing.
class tls {
public:
    using category = observability_tag;

    tls() = default;
    /// Copies the facts known at this moment.
    tls(const tls& other) : servers_(other.servers()) {}
    tls& operator=(const tls&) = delete;

    template <class Handle>
    void on_event(const event_info<Handle>& e) noexcept {
        if constexpr (std::is_same_v<Handle, PGconn*>) {
            if (e.kind != event::connected) return;
            try {
                if (auto f = read_tls_facts(e.handle)) record(std::move(*f));
            } catch (...) { // out of memory: the facts of this connection are lost
            }
        }
    }

    /// The facts of the last connection to each server, in the order the
    /// servers were first seen.
    std::vector<tls_facts> servers() const {
        std::lock_guard lock(lock_);
        return servers_;
    }
    /// The certificate that expires first among them, as facts; empty when
    /// no TLS connection was opened yet.
    std::optional<tls_facts> earliest_expiry() const {
        std::optional<tls_facts> first;
        for (auto& f : servers())
            if (f.certificate_not_after && (!first || *f.certificate_not_after < *first->certificate_not_after))
                first = f;
        return first;
    }

private:
    void record(tls_facts f) {
        std::lock_guard lock(lock_);
        auto same = std::find_if(servers_.begin(), servers_.end(), [&](const tls_facts& s) {
            return s.server_address == f.server_address && s.server_port == f.server_port;
        });
        if (same != servers_.end())
            *same = std::move(f);
        else
            servers_.push_back(std::move(f));
    }

    mutable detail::fork_aware_lock lock_;
    std::vector<tls_facts> servers_;
};

} // namespace observability
} // namespace pqpool
