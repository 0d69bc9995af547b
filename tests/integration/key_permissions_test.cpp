// The sslkey permission check at construction against libpq itself: for each
// owner and mode, pqpool refuses the key exactly when libpq 15 refuses it at
// the connect (fe-secure-openssl.c: a root-owned key may be read by its
// group, any other owner's, the current user's or not, by nobody else).
// Needs root (to give the key file other owners); tests/unit/tls_files_test.cpp
// checks the rule for files this process owns.

#include "catch.hpp"
#include "certs.hpp"
#include "sandbox.hpp"

#include <pqpool/connector/libpq.hpp>

#include <libpq-fe.h>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>

using namespace pqpool;
using namespace pqpool::test;
using namespace std::chrono_literals;

namespace {

// Does libpq refuse this key for its permissions?
bool libpq_refuses(const std::string& conninfo) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    const std::string msg = PQerrorMessage(c);
    const bool ok = PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    INFO(msg);
    return !ok && msg.find("group or world access") != std::string::npos;
}

bool pqpool_refuses(const std::string& conninfo) {
    try {
        const libpq_connector c{conninfo};
        return false;
    } catch (const config_error& e) {
        return std::string(e.what()).find("group or world access") != std::string::npos;
    }
}

} // namespace

TEST_CASE("tls files: pqpool refuses an sslkey for its owner and mode exactly when libpq does", "[integration][tls]") {
    REQUIRE(::geteuid() == 0); // to make files owned by root and by another user
    const passwd* other = ::getpwnam("postgres");
    REQUIRE(other);
    const auto& sb = sandbox::get();
    temp_dir dir;
    pkey key = make_key();
    x509 cert = make_cert(key.get(), -1h, 24h, "client");
    const std::string cert_path = dir.write_cert("client.crt", cert.get());
    struct kase {
        uid_t owner;
        mode_t mode;
        bool refused; // by libpq 15
    };
    const kase cases[] = {
        {0, 0600, false},
        {0, 0640, false},
        {0, 0660, true},
        {0, 0644, true},
        {other->pw_uid, 0600, false},
        {other->pw_uid, 0400, false},
        {other->pw_uid, 0640, true},
        {other->pw_uid, 0604, true},
    };
    int n = 0;
    for (const kase& k : cases) {
        const std::string key_path = dir.write_key("k" + std::to_string(n++) + ".key", key.get(), 0600);
        REQUIRE(::chown(key_path.c_str(), k.owner, static_cast<gid_t>(-1)) == 0);
        REQUIRE(::chmod(key_path.c_str(), k.mode) == 0);
        const std::string conninfo = "host=" + sb.var("PQPOOL_TEST_HOST") + " port=" + sb.var("PQPOOL_TEST_PORT") +
                                     " dbname=" + sb.var("PQPOOL_TEST_DBNAME") + " user=" + sb.var("PQPOOL_TEST_USER") +
                                     " sslmode=require sslcert=" + cert_path + " sslkey=" + key_path +
                                     " connect_timeout=10";
        CAPTURE(k.owner, k.mode);
        CHECK(libpq_refuses(conninfo) == k.refused); // the oracle agrees with what this test expects
        CHECK(pqpool_refuses(conninfo) == k.refused);
    }
}
