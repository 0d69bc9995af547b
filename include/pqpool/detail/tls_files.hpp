#pragma once

// The TLS files a connection string names (sslrootcert, sslcert, sslkey),
// read with OpenSSL when the connector is built, so that a mistake is one
// clear config_error naming the file and the problem instead of a failed
// connect each time: a file that is not PEM (a key may also be DER, as libpq
// reads it), certificates that have expired or are not valid yet, a key that
// does not match its certificate or cannot be decrypted, and a key file whose
// permissions libpq refuses. No network I/O, no wait: a file that is not a
// regular file (a FIFO, a device) is left to libpq.

#include <pqpool/detail/conninfo.hpp>
#include <pqpool/error.hpp>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>

namespace pqpool::detail {

namespace tls {

struct bio_free {
    void operator()(BIO* b) const noexcept { BIO_free(b); }
};
struct x509_free {
    void operator()(X509* x) const noexcept { X509_free(x); }
};
struct pkey_free {
    void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
struct info_stack_free {
    void operator()(STACK_OF(X509_INFO) * s) const noexcept { sk_X509_INFO_pop_free(s, X509_INFO_free); }
};
using bio_ptr = std::unique_ptr<BIO, bio_free>;
using x509_ptr = std::unique_ptr<X509, x509_free>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;
using info_stack_ptr = std::unique_ptr<STACK_OF(X509_INFO), info_stack_free>;

// Leaves OpenSSL's error queue of this thread empty, as libpq expects to
// find it (it reports the first error it finds there).
struct error_queue_guard {
    error_queue_guard() { ERR_clear_error(); }
    ~error_queue_guard() { ERR_clear_error(); }
    error_queue_guard(const error_queue_guard&) = delete;
    error_queue_guard& operator=(const error_queue_guard&) = delete;
};

[[noreturn]] inline void fail(std::string_view keyword, const std::string& path, const std::string& problem) {
    throw config_error("pqpool: " + std::string(keyword) + " file " + quoted(path) + " " + problem);
}

// The file's bytes, or nothing when it is not a regular file (libpq reads
// those as it will; reading here could wait). Existence and readability were
// checked before (check_file).
inline std::optional<std::string> read_regular(std::string_view keyword, const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) fail(keyword, path, std::string("cannot be read: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return std::nullopt;
    }
    constexpr off_t limit = 64 << 20;
    if (st.st_size > limit) {
        ::close(fd);
        fail(keyword, path, "is larger than 64 MiB: not a certificate or key file");
    }
    std::string out(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t got = 0;
    while (got < out.size()) {
        const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    ::close(fd);
    out.resize(got);
    return out;
}

inline bio_ptr memory_bio(const std::string& bytes) {
    bio_ptr b{BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size()))};
    if (!b) throw std::bad_alloc();
    return b;
}

inline std::string show_time(const ASN1_TIME* t) {
    std::tm tm{};
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "an unreadable date";
    char buf[40];
    if (std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0) return "an unreadable date";
    return buf;
}

inline std::string subject_of(X509* x) {
    char buf[256];
    if (!X509_NAME_oneline(X509_get_subject_name(x), buf, sizeof buf)) return "(no subject)";
    return buf;
}

// Empty when `x` is valid now; else what is wrong with its dates.
inline std::string date_problem(X509* x) {
    const ASN1_TIME* not_before = X509_get0_notBefore(x);
    const ASN1_TIME* not_after = X509_get0_notAfter(x);
    if (X509_cmp_current_time(not_after) < 0) return "expired on " + show_time(not_after);
    if (X509_cmp_current_time(not_before) > 0) return "is not valid before " + show_time(not_before);
    return {};
}

// sslrootcert: PEM certificates (and CRLs), as libpq loads them into its
// trust store. A bundle is refused when none of its certificates is valid now
// (system bundles carry a few expired roots; one valid one may be the one).
[[gnu::cold]] inline void check_root(const std::string& path) {
    const auto bytes = read_regular("sslrootcert", path);
    if (!bytes) return;
    bio_ptr bio = memory_bio(*bytes);
    info_stack_ptr infos{PEM_X509_INFO_read_bio(bio.get(), nullptr, nullptr, nullptr)};
    int certificates = 0;
    std::string first_problem, first_subject;
    for (int i = 0; infos && i < sk_X509_INFO_num(infos.get()); ++i) {
        X509* x = sk_X509_INFO_value(infos.get(), i)->x509;
        if (!x) continue;
        ++certificates;
        const std::string problem = date_problem(x);
        if (problem.empty()) return;
        if (first_problem.empty()) {
            first_problem = problem;
            first_subject = subject_of(x);
        }
    }
    if (certificates == 0)
        fail("sslrootcert", path,
             "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); libpq would refuse "
             "every server");
    fail("sslrootcert", path,
         (certificates == 1 ? "holds one certificate, " + first_subject + ", which "
                            : "holds no certificate valid now (the first, " + first_subject + ", ") +
             first_problem + (certificates == 1 ? "" : ")") + "; libpq would refuse every server");
}

// sslcert: the client certificate comes first (a chain may follow).
[[gnu::cold]] inline x509_ptr check_client_certificate(const std::string& path) {
    const auto bytes = read_regular("sslcert", path);
    if (!bytes) return nullptr;
    bio_ptr bio = memory_bio(*bytes);
    x509_ptr cert{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)};
    if (!cert) fail("sslcert", path, "is not a PEM certificate (\"-----BEGIN CERTIFICATE-----\")");
    if (const std::string problem = date_problem(cert.get()); !problem.empty())
        fail("sslcert", path, "holds a certificate, " + subject_of(cert.get()) + ", which " + problem);
    return cert;
}

// libpq's rule (fe-secure-openssl.c, as in 15.x: PostgreSQL's "libpq-ssl"
// documentation): a key file owned by root may grant its group read access,
// at most u=rw,g=r (0640); a key file owned by anyone else (the current user
// or not: if we can read it despite such a mode, it is ours to use) must
// grant its group and others nothing, at most u=rw (0600).
[[gnu::cold]] inline bool key_mode_refused(uid_t owner, mode_t mode) noexcept {
    return owner == 0 ? (mode & (S_IWGRP | S_IXGRP | S_IRWXO)) != 0 : (mode & (S_IRWXG | S_IRWXO)) != 0;
}

[[gnu::cold]] inline void check_key_permissions(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;
    if (!key_mode_refused(st.st_uid, st.st_mode)) return;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    fail("sslkey", path,
         std::string("has group or world access (mode ") + mode +
             "), which libpq refuses: make it u=rw (0600) or less, or owned by root and u=rw,g=r (0640) or less");
}

struct password_request {
    const std::string* password; // sslpassword, when given
    bool asked = false;
};

inline int give_password(char* buf, int size, int, void* u) {
    auto* req = static_cast<password_request*>(u);
    req->asked = true;
    if (!req->password || size <= 0) return 0;
    const int n = static_cast<int>(std::min<std::size_t>(req->password->size(), static_cast<std::size_t>(size)));
    std::memcpy(buf, req->password->data(), static_cast<std::size_t>(n));
    return n;
}

// sslkey: PEM, else DER, as libpq reads it; an encrypted PEM key with
// sslpassword. The messages never show the password. `password_later`: a
// credentials callable may give sslpassword at each connect, so an encrypted
// key that the connection string's sslpassword (if any) does not open is
// left to libpq, which reports a wrong one at the connect (null: nothing to
// match against sslcert).
[[gnu::cold]] inline pkey_ptr check_key(const std::string& path, const std::string* sslpassword, bool password_later) {
    check_key_permissions(path);
    const auto bytes = read_regular("sslkey", path);
    if (!bytes) return nullptr;
    password_request req{sslpassword};
    bio_ptr bio = memory_bio(*bytes);
    pkey_ptr key{PEM_read_bio_PrivateKey(bio.get(), nullptr, &give_password, &req)};
    if (key) return key;
    if (req.asked && password_later) return nullptr;
    if (req.asked)
        fail("sslkey", path,
             sslpassword ? "is encrypted and cannot be decrypted with the given sslpassword"
                         : "is encrypted and no sslpassword is given (libpq does not ask for one)");
    ERR_clear_error();
    bio = memory_bio(*bytes);
    key.reset(d2i_PrivateKey_bio(bio.get(), nullptr));
    if (!key) fail("sslkey", path, "is neither a PEM (\"-----BEGIN PRIVATE KEY-----\") nor a DER private key");
    return key;
}

} // namespace tls

// The checks above, for the files the connection string names (not with
// sslmode=disable, where libpq reads none of them). Throws config_error.
// `password_later`: a credentials callable may supply sslpassword (see
// check_key). Cold: run once per connector, so compiled for size (every
// translation unit that builds a connector compiles them).
[[gnu::cold]] inline void check_tls_files(const parsed_conninfo& ci, bool password_later) {
    const std::string* mode = ci.get("sslmode");
    if (mode && *mode == "disable") return;
    tls::error_queue_guard clean;
    if (const std::string* root = ci.get("sslrootcert"); root && *root != "system") tls::check_root(*root);
    tls::x509_ptr cert;
    tls::pkey_ptr key;
    const std::string* cert_path = ci.get("sslcert");
    if (cert_path) cert = tls::check_client_certificate(*cert_path);
    const std::string* key_path = ci.get("sslkey");
    // "engine:key-id" names a key held by an OpenSSL engine, not a file.
    if (key_path && !(key_path->find(':') != std::string::npos && ::access(key_path->c_str(), F_OK) != 0))
        key = tls::check_key(*key_path, ci.get("sslpassword"), password_later);
    if (cert && key && X509_check_private_key(cert.get(), key.get()) != 1)
        throw config_error("pqpool: sslkey file " + quoted(*key_path) +
                           " does not hold the key of the certificate in "
                           "sslcert file " +
                           quoted(*cert_path) + " (" + tls::subject_of(cert.get()) + ")");
}

} // namespace pqpool::detail
