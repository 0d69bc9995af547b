// Passwords with the characters that confuse parsers, against the sandbox's
// password role: key=value (quoted) and URI (percent-encoded) forms connect;
// wrong ones and unencoded URIs fail, and no message ever holds the password
// or a piece of it. A short password does not scrub unrelated text.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <string>
#include <vector>

using namespace pqpool::test::connector;
using pqpool::config_error;
using pqpool::connect_error;
using pqpool::libpq_connector;
using pqpool::test::query;

namespace {

const std::string specials = "/@:?#%&='\\ ";

// What must never appear in a message about `conninfo`, which holds
// `password`: every substring of it of 3 characters or more that the rest of
// the conninfo does not also hold, and every maximal run between special
// characters.
std::vector<std::string> fragments(const std::string& password, const std::string& conninfo) {
    std::string rest = conninfo;
    for (std::size_t at = rest.find(password); at != std::string::npos; at = rest.find(password))
        rest.erase(at, password.size());
    std::vector<std::string> out;
    for (std::size_t i = 0; i < password.size(); ++i)
        for (std::size_t n = 3; i + n <= password.size(); ++n)
            if (rest.find(password.substr(i, n)) == std::string::npos) out.push_back(password.substr(i, n));
    std::size_t start = 0;
    for (std::size_t i = 0; i <= password.size(); ++i) {
        if (i == password.size() || specials.find(password[i]) != std::string::npos) {
            if (i > start) out.push_back(password.substr(start, i - start));
            start = i + 1;
        }
    }
    return out;
}

// The word "password" of our own messages holds "ass" and "ord", which the
// example passwords below hold too: it does not count.
void check_clean(const std::string& text, const std::string& password, const std::string& conninfo) {
    std::string checked = text;
    for (std::size_t at = checked.find("password"); at != std::string::npos; at = checked.find("password"))
        checked.replace(at, 8, "|");
    for (const std::string& f : fragments(password, conninfo)) {
        CAPTURE(text, f);
        CHECK(checked.find(f) == std::string::npos);
    }
}

std::string quote_kv(const std::string& v) {
    std::string out = "'";
    for (char c : v) {
        if (c == '\'' || c == '\\') out += '\\';
        out += c;
    }
    return out + "'";
}

std::string sql_literal(const std::string& v) {
    std::string out = "'";
    for (char c : v) {
        if (c == '\'') out += '\'';
        out += c;
    }
    return out + "'";
}

std::string kv_conninfo(const std::string& password) {
    return "host=" + sbx().var("PQPOOL_TEST_HOST") + " port=" + sbx().var("PQPOOL_TEST_PORT") +
           " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") + " user=" + sbx().var("PQPOOL_TEST_PASSWORD_USER") +
           " password=" + quote_kv(password) + " sslmode=require";
}

std::string raw_uri(const std::string& password_as_written) {
    return "postgresql://" + sbx().var("PQPOOL_TEST_PASSWORD_USER") + ":" + password_as_written + "@" +
           sbx().var("PQPOOL_TEST_HOST") + ":" + sbx().var("PQPOOL_TEST_PORT") + "/" + sbx().var("PQPOOL_TEST_DBNAME") +
           "?sslmode=require";
}

// Sets the password role's password for the test; the sandbox's comes back
// at scope exit (other tests use it).
struct role_password {
    admin_conn admin;
    explicit role_password(const std::string& password) { set(password); }
    ~role_password() { set(sbx().password()); }
    role_password(const role_password&) = delete;
    role_password& operator=(const role_password&) = delete;
    void set(const std::string& password) {
        REQUIRE(exec_ok(admin.c,
                        "ALTER ROLE " + sbx().var("PQPOOL_TEST_PASSWORD_USER") + " PASSWORD " + sql_literal(password)));
    }
};

// Connects with `conninfo`; true on success. On failure, every message
// (construction or connect) must be free of the password's fragments.
bool connects_cleanly(const std::string& conninfo, const std::string& password) {
    CAPTURE(conninfo);
    try {
        const libpq_connector c{conninfo};
        check_clean(c.description(), password, conninfo);
        try {
            scoped h{c, c.connect(in(std::chrono::seconds{10}))};
            CHECK(query(h.h, "SELECT current_user") == sbx().var("PQPOOL_TEST_PASSWORD_USER"));
            return true;
        } catch (const connect_error& e) {
            check_clean(e.what(), password, conninfo);
        }
    } catch (const config_error& e) {
        check_clean(e.what(), password, conninfo);
    }
    return false;
}

} // namespace

TEST_CASE("libpq_connector: passwords with special characters connect, and no message holds a piece of one",
          "[integration][libpq]") {
    for (const char special : specials) {
        const std::string right = std::string("Kq7") + special + "Zw4Vb";
        const std::string wrong = std::string("Zw4Vb") + special + "Kq7";
        CAPTURE(right);
        role_password role{right};

        // key=value, quoted as libpq wants: connects; wrong, fails cleanly.
        CHECK(connects_cleanly(kv_conninfo(right), right));
        CHECK_FALSE(connects_cleanly(kv_conninfo(wrong), wrong));
        // URI, percent-encoded: connects; wrong, fails cleanly.
        CHECK(connects_cleanly(password_uri(right), right));
        CHECK_FALSE(connects_cleanly(password_uri(wrong), wrong));
        // URI, not encoded: connects, or fails with a clean message.
        connects_cleanly(raw_uri(right), right);
        CHECK_FALSE(connects_cleanly(raw_uri(wrong), wrong));
    }
}

TEST_CASE("libpq_connector: an unencoded '/' or '@' in a URI's password is refused without quoting the URI",
          "[integration][libpq]") {
    // Passwords as users write them, pointed at the sandbox: libpq would read pieces of
    // these passwords as the port, the host or the database name.
    for (const std::string password : {"Right-Pass/42", "9hQe2/Zk8Wq4Rt", "Pa@ss-Word-7", "Kq7?Zw4/Vb9"}) {
        const std::string uri = raw_uri(password);
        CAPTURE(uri);
        try {
            const libpq_connector c{uri};
            FAIL("accepted: " << c.description());
        } catch (const config_error& e) {
            const std::string msg = e.what();
            CHECK(msg.find("percent-encoded") != std::string::npos);
            check_clean(msg, password, uri);
        }
    }
}

TEST_CASE("libpq_connector: a short password scrubs only itself, as a whole token", "[integration][libpq]") {
    // The sandbox's database is "pqpool": it contains the password "pool".
    const std::string conninfo = "host=" + sbx().var("PQPOOL_TEST_HOST") + " port=" + sbx().var("PQPOOL_TEST_PORT") +
                                 " dbname=pqpool user=" + sbx().var("PQPOOL_TEST_PASSWORD_USER") +
                                 " password=pool sslmode=require";
    const libpq_connector c{conninfo};
    try {
        c.close(c.connect(in(std::chrono::seconds{10})));
        FAIL("the password role accepted the password \"pool\"");
    } catch (const connect_error& e) {
        const std::string msg = e.what();
        CAPTURE(msg);
        CHECK(e.sqlstate() == "28P01");
        CHECK(msg.rfind("pqpool: cannot connect to ", 0) == 0);
        CHECK(msg.find("dbname=pqpool") != std::string::npos);
        CHECK(msg.find("user=" + sbx().var("PQPOOL_TEST_PASSWORD_USER")) != std::string::npos);
        CHECK(msg.find("***") == std::string::npos); // nothing needed scrubbing
        CHECK_FALSE(has_token(msg, "pool"));
    }
}
