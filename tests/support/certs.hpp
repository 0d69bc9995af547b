#pragma once

// Certificates and keys made by the tests themselves (OpenSSL), written into a
// temporary folder: valid, expired, not yet valid, keys that match or not,
// encrypted, in DER, with any permissions.

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

namespace pqpool::test {

struct pkey_deleter {
    void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
struct x509_deleter {
    void operator()(X509* x) const noexcept { X509_free(x); }
};
using pkey = std::unique_ptr<EVP_PKEY, pkey_deleter>;
using x509 = std::unique_ptr<X509, x509_deleter>;

// An EC P-256 key (fast to make).
inline pkey make_key() {
    pkey k{EVP_EC_gen("P-256")};
    if (!k) throw std::runtime_error("certs: cannot make a key");
    return k;
}

// A certificate for `key`, valid from now + `from` to now + `to`, signed by
// `issuer_key` (itself when null: self-signed).
inline x509 make_cert(EVP_PKEY* key, std::chrono::seconds from, std::chrono::seconds to, const char* cn,
                      EVP_PKEY* issuer_key = nullptr) {
    x509 c{X509_new()};
    X509_set_version(c.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(c.get()), static_cast<long>(from.count()));
    X509_gmtime_adj(X509_getm_notAfter(c.get()), static_cast<long>(to.count()));
    X509_set_pubkey(c.get(), key);
    X509_NAME* name = X509_get_subject_name(c.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
    X509_set_issuer_name(c.get(), name);
    if (X509_sign(c.get(), issuer_key ? issuer_key : key, EVP_sha256()) == 0)
        throw std::runtime_error("certs: cannot sign");
    return c;
}

// A temporary folder, removed with everything in it.
class temp_dir {
public:
    temp_dir() {
        char tmpl[] = "/tmp/pqpool-certs.XXXXXX";
        if (!::mkdtemp(tmpl)) throw std::runtime_error("certs: mkdtemp failed");
        path_ = tmpl;
    }
    ~temp_dir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    std::string file(const std::string& name) const { return path_ + "/" + name; }

    std::string write(const std::string& name, const std::string& bytes, mode_t mode = 0644) const {
        const std::string p = file(name);
        std::ofstream(p, std::ios::binary) << bytes;
        ::chmod(p.c_str(), mode);
        return p;
    }
    std::string write_cert(const std::string& name, X509* c, X509* more = nullptr) const {
        return write(name, pem(c) + (more ? pem(more) : std::string()));
    }
    // 0600 unless told otherwise; encrypted (AES-256) with `password` when given.
    std::string write_key(const std::string& name, EVP_PKEY* k, mode_t mode = 0600,
                          const std::string& password = {}) const {
        return write(name, key_pem(k, password), mode);
    }
    std::string write_key_der(const std::string& name, EVP_PKEY* k) const {
        unsigned char* buf = nullptr;
        const int n = i2d_PrivateKey(k, &buf);
        std::string der(reinterpret_cast<char*>(buf), static_cast<std::size_t>(n));
        OPENSSL_free(buf);
        return write(name, der, 0600);
    }

    static std::string pem(X509* c) {
        BIO* b = BIO_new(BIO_s_mem());
        PEM_write_bio_X509(b, c);
        return drain(b);
    }
    static std::string key_pem(EVP_PKEY* k, const std::string& password) {
        BIO* b = BIO_new(BIO_s_mem());
        if (password.empty())
            PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
        else
            PEM_write_bio_PKCS8PrivateKey(b, k, EVP_aes_256_cbc(), password.data(), static_cast<int>(password.size()),
                                          nullptr, nullptr);
        return drain(b);
    }

private:
    static std::string drain(BIO* b) {
        char* data = nullptr;
        const long n = BIO_get_mem_data(b, &data);
        std::string out(data, static_cast<std::size_t>(n));
        BIO_free(b);
        return out;
    }
    std::string path_;
};

} // namespace pqpool::test
