// The TLS files of a connection string, checked with OpenSSL when the
// connector is built: each mistake is one config_error naming the file and the
// problem (tests/integration/key_permissions_test.cpp holds the key
// permission check to libpq's own at connect). Certificates and keys are made
// here (support/certs.hpp).

#include "catch.hpp"
#include "certs.hpp"

#include <pqpool/connector/libpq.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::make_cert;
using test::make_key;
using test::temp_dir;

namespace {

constexpr std::chrono::seconds day{86400};

libpq_connector build(const std::string& files) {
    return libpq_connector{"host=127.0.0.1 port=1 dbname=x user=x sslmode=verify-ca " + files};
}

// The config_error's message, or "" when it was accepted.
std::string refusal(const std::string& files) {
    try {
        build(files);
        return "";
    } catch (const config_error& e) {
        return e.what();
    }
}

} // namespace

TEST_CASE("tls files: valid ones are accepted", "[unit][libpq][tls]") {
    temp_dir d;
    auto ca_key = make_key(), key = make_key();
    auto ca = make_cert(ca_key.get(), -day, 30 * day, "test root");
    auto cert = make_cert(key.get(), -day, 30 * day, "client", ca_key.get());
    const std::string files = "sslrootcert=" + d.write_cert("root.crt", ca.get()) +
                              " sslcert=" + d.write_cert("client.crt", cert.get(), ca.get()) +
                              " sslkey=" + d.write_key("client.key", key.get());
    CHECK(refusal(files).empty());
    // A DER key, as libpq also reads it; an encrypted one with its sslpassword.
    CHECK(refusal("sslcert=" + d.file("client.crt") + " sslkey=" + d.write_key_der("client.der", key.get())).empty());
    CHECK(refusal("sslcert=" + d.file("client.crt") +
                  " sslkey=" + d.write_key("enc.key", key.get(), 0600, "Zk7-keypass") + " sslpassword=Zk7-keypass")
              .empty());
    // A bundle with one expired root among valid ones (system bundles have some).
    auto old_key = make_key();
    auto old = make_cert(old_key.get(), -30 * day, -day, "retired root");
    CHECK(refusal("sslrootcert=" + d.write_cert("bundle.crt", old.get(), ca.get())).empty());
    // sslmode=disable reads none of them.
    const std::string garbage = d.write("garbage.crt", "not a certificate\n");
    CHECK_NOTHROW(libpq_connector{"host=127.0.0.1 port=1 sslmode=disable sslrootcert=" + garbage});
}

TEST_CASE("tls files: sslrootcert that is not PEM, expired, or not yet valid", "[unit][libpq][tls]") {
    temp_dir d;
    auto k = make_key();
    const std::string not_pem = d.write("root.crt", "-----BEGIN SOMETHING-----\nxyz\n");
    CHECK_THAT(refusal("sslrootcert=" + not_pem),
               Catch::Contains("sslrootcert file \"" + not_pem + "\" holds no PEM certificate"));
    auto expired = make_cert(k.get(), -30 * day, -2 * day, "expired root");
    const std::string e = d.write_cert("expired.crt", expired.get());
    CHECK_THAT(
        refusal("sslrootcert=" + e),
        Catch::Contains("sslrootcert file \"" + e + "\" holds one certificate, /CN=expired root, which expired on "));
    auto future = make_cert(k.get(), 2 * day, 30 * day, "future root");
    const std::string f = d.write_cert("future.crt", future.get());
    CHECK_THAT(refusal("sslrootcert=" + f),
               Catch::Contains("sslrootcert file \"" + f + "\"") && Catch::Contains("is not valid before "));
    // A bundle of only expired ones.
    CHECK_THAT(refusal("sslrootcert=" + d.write_cert("all_old.crt", expired.get(), expired.get())),
               Catch::Contains("holds no certificate valid now (the first, /CN=expired root, expired on "));
}

TEST_CASE("tls files: sslcert that is not PEM, expired, or not yet valid", "[unit][libpq][tls]") {
    temp_dir d;
    auto k = make_key();
    const std::string key = d.write_key("client.key", k.get());
    const std::string not_pem = d.write("client.crt", "hello\n");
    CHECK_THAT(refusal("sslcert=" + not_pem + " sslkey=" + key),
               Catch::Contains("sslcert file \"" + not_pem + "\" is not a PEM certificate"));
    auto expired = make_cert(k.get(), -30 * day, -day, "client");
    const std::string e = d.write_cert("expired.crt", expired.get());
    CHECK_THAT(refusal("sslcert=" + e + " sslkey=" + key),
               Catch::Contains("sslcert file \"" + e + "\" holds a certificate, /CN=client, which expired on "));
    auto future = make_cert(k.get(), day, 30 * day, "client");
    const std::string f = d.write_cert("future.crt", future.get());
    CHECK_THAT(
        refusal("sslcert=" + f + " sslkey=" + key),
        Catch::Contains("sslcert file \"" + f + "\" holds a certificate, /CN=client, which is not valid before "));
}

TEST_CASE("tls files: sslkey that matches no certificate, is readable by others, is not a key, or cannot be "
          "decrypted",
          "[unit][libpq][tls]") {
    temp_dir d;
    auto k = make_key(), other = make_key();
    auto cert = make_cert(k.get(), -day, 30 * day, "client");
    const std::string crt = d.write_cert("client.crt", cert.get());

    const std::string wrong = d.write_key("other.key", other.get());
    CHECK_THAT(refusal("sslcert=" + crt + " sslkey=" + wrong),
               Catch::Contains("sslkey file \"" + wrong +
                               "\" does not hold the key of the certificate in sslcert file \"" + crt +
                               "\" (/CN=client)"));

    // libpq refuses a key file that others may read, or its group may write or run, whoever owns it
    // (here: we do); its group may read it only when root owns it (tests/integration/key_permissions_test.cpp
    // checks the same rule against libpq itself, for files owned by root and by another user).
    const bool as_root = ::geteuid() == 0;
    std::vector<mode_t> refused{0644, 0604, 0610, 0620};
    if (!as_root) refused.push_back(0640);
    for (mode_t mode : refused) {
        CAPTURE(mode);
        const std::string open_key = d.write_key("open.key", k.get(), mode);
        char shown[8];
        std::snprintf(shown, sizeof shown, "%04o", static_cast<unsigned>(mode));
        CHECK_THAT(refusal("sslcert=" + crt + " sslkey=" + open_key),
                   Catch::Contains("sslkey file \"" + open_key + "\" has group or world access (mode " + shown +
                                   "), which libpq refuses"));
    }
    CHECK(refusal("sslcert=" + crt + " sslkey=" + d.write_key("tight.key", k.get(), 0400)).empty());
    if (as_root) CHECK(refusal("sslcert=" + crt + " sslkey=" + d.write_key("group.key", k.get(), 0640)).empty());
    // The rule itself, for owners this test cannot make.
    CHECK_FALSE(detail::tls::key_mode_refused(0, 0640));
    CHECK(detail::tls::key_mode_refused(0, 0660));
    CHECK(detail::tls::key_mode_refused(0, 0644));
    CHECK(detail::tls::key_mode_refused(1000, 0640)); // another user's, or ours when we are not root
    CHECK(detail::tls::key_mode_refused(1000, 0604));
    CHECK_FALSE(detail::tls::key_mode_refused(1000, 0600));

    const std::string junk = d.write("junk.key", "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n", 0600);
    CHECK_THAT(refusal("sslcert=" + crt + " sslkey=" + junk),
               Catch::Contains("sslkey file \"" + junk + "\" is neither a PEM") && Catch::Contains("nor a DER"));

    const std::string secret = "Zq9-sslpass-4711";
    const std::string enc = d.write_key("enc.key", k.get(), 0600, secret);
    CHECK_THAT(refusal("sslcert=" + crt + " sslkey=" + enc),
               Catch::Contains("sslkey file \"" + enc + "\" is encrypted and no sslpassword is given"));
    const std::string msg = refusal("sslcert=" + crt + " sslkey=" + enc + " sslpassword=Zq9-wrong-0815");
    CHECK_THAT(msg, Catch::Contains("is encrypted and cannot be decrypted with the given sslpassword"));
    CHECK(msg.find("Zq9") == std::string::npos);
    CHECK(refusal("sslcert=" + crt + " sslkey=" + enc + " sslpassword=" + secret).empty());
}

TEST_CASE("tls files: an encrypted sslkey whose sslpassword a credentials callable gives is left to the connect",
          "[unit][libpq][tls][credentials]") {
    temp_dir d;
    auto k = make_key();
    auto cert = make_cert(k.get(), -day, 30 * day, "client");
    const std::string crt = d.write_cert("client.crt", cert.get());
    const std::string enc = d.write_key("enc.key", k.get(), 0600, "Zv3-from-the-vault");
    libpq_options with_callable;
    with_callable.credentials = [](const connect_host&) {
        return connect_credentials{.parameters = {{"sslpassword", "Zv3-from-the-vault"}}};
    };
    const std::string files = "host=127.0.0.1 port=1 dbname=x user=x sslmode=require sslcert=" + crt + " sslkey=" + enc;
    CHECK_NOTHROW(libpq_connector{files, with_callable});
    // Also when the connection string's own sslpassword does not open it: the callable may give another.
    CHECK_NOTHROW(libpq_connector{files + " sslpassword=Zv3-old", with_callable});
    // Without a callable nothing could give it: refused as before.
    CHECK_THROWS_WITH(libpq_connector{files}, Catch::Contains("is encrypted and no sslpassword is given"));
    // The key's other checks still hold with a callable.
    const std::string open_key = d.write_key("open.key", k.get(), 0604, "Zv3-from-the-vault");
    CHECK_THROWS_WITH((libpq_connector{"host=127.0.0.1 port=1 sslmode=require sslcert=" + crt + " sslkey=" + open_key,
                                       with_callable}),
                      Catch::Contains("has group or world access"));
}
