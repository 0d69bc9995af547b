#pragma once

// AWS Signature Version 4, the parts a presigned URL needs: SHA-256,
// HMAC-SHA256 and the signing key chain, with OpenSSL; the URI encoding and
// timestamps AWS expects. Checked against the published SigV4 examples and,
// for the RDS token built from them, against botocore
// (tests/unit/rds_iam_test.cpp).

#include <openssl/evp.h>
#include <openssl/opensslv.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#include <openssl/hmac.h>
#endif

#include <array>
#include <chrono>
#include <cstddef>
#include <ctime>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pqpool::detail::sigv4 {

using digest = std::array<unsigned char, 32>;

inline std::string hex(const unsigned char* p, std::size_t n) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(2 * n);
    for (std::size_t i = 0; i < n; ++i) {
        out += digits[p[i] >> 4];
        out += digits[p[i] & 15];
    }
    return out;
}
inline std::string hex(const digest& d) { return hex(d.data(), d.size()); }

inline digest sha256(std::string_view data) {
    digest out{};
    unsigned int n = 0;
    if (EVP_Digest(data.data(), data.size(), out.data(), &n, EVP_sha256(), nullptr) != 1 || n != out.size())
        throw std::runtime_error("pqpool: OpenSSL could not compute SHA-256");
    return out;
}

inline digest hmac_sha256(std::string_view key, std::string_view data) {
    digest out{};
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    std::size_t n = 0;
    const bool ok = EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                              reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), out.size(),
                              &n) != nullptr;
#else
    unsigned int n = 0;
    const bool ok = HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                         reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &n) != nullptr;
#endif
    if (!ok || n != out.size()) throw std::runtime_error("pqpool: OpenSSL could not compute HMAC-SHA256");
    return out;
}
inline digest hmac_sha256(const digest& key, std::string_view data) {
    return hmac_sha256(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()), data);
}

// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")
inline digest signing_key(std::string_view secret, std::string_view date, std::string_view region,
                          std::string_view service) {
    const digest k_date = hmac_sha256("AWS4" + std::string(secret), date);
    const digest k_region = hmac_sha256(k_date, region);
    const digest k_service = hmac_sha256(k_region, service);
    return hmac_sha256(k_service, "aws4_request");
}

// RFC 3986 percent-encoding of everything but the unreserved characters
// (A-Z a-z 0-9 - . _ ~), as SigV4 asks for query keys and values.
inline std::string uri_encode(std::string_view s) {
    static constexpr char digits[] = "0123456789ABCDEF";
    std::string out;
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if ((u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~') {
            out += c;
        } else {
            out += '%';
            out += digits[u >> 4];
            out += digits[u & 15];
        }
    }
    return out;
}

// "20240305T140709Z" (UTC).
inline std::string amz_date(std::chrono::system_clock::time_point t) {
    const std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    if (!gmtime_r(&secs, &tm)) throw std::runtime_error("pqpool: the time cannot be shown in UTC");
    if (tm.tm_year < 0 || tm.tm_year > 8099) throw std::runtime_error("pqpool: the time is out of range for AWS");
    // strftime: no format-truncation warning to argue with.
    char buf[32];
    if (std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm) != 16)
        throw std::runtime_error("pqpool: the time cannot be shown in UTC");
    return buf;
}

// "AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<hex SHA-256 of the canonical request>"
inline std::string string_to_sign(std::string_view amz_date, std::string_view scope,
                                  std::string_view canonical_request) {
    return "AWS4-HMAC-SHA256\n" + std::string(amz_date) + "\n" + std::string(scope) + "\n" +
           hex(sha256(canonical_request));
}

} // namespace pqpool::detail::sigv4
