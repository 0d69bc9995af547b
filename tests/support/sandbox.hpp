#pragma once

// The real PostgreSQL the integration tests run against.
//
// CTest starts `scripts/pg-sandbox` as a fixture and points PQPOOL_SANDBOX_STATE
// at the state file it writes (KEY=VALUE lines, the script's own path among
// them, for `ctl`). PQPOOL_TEST_CONNINFO, when set
// in the environment, points the tests at an existing server instead; tests
// that need to control the server (restart it, know the password role) then
// fail with a message saying so. When neither is available every call throws:
// an integration test never passes without a server.

#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

namespace pqpool::test {

class sandbox {
public:
    static const sandbox& get() {
        static const sandbox instance = load();
        return instance;
    }

    // A variable of the state file (e.g. "PQPOOL_TEST_PORT"); throws if absent.
    const std::string& var(const std::string& key) const {
        auto it = vars_.find(key);
        if (it == vars_.end())
            throw std::runtime_error("pqpool test sandbox: " + key + " is not known (" + origin_ +
                                     "); this test needs the scripts/pg-sandbox server");
        return it->second;
    }

    bool managed() const { return vars_.count("PQPOOL_TEST_DIR") != 0; }

    // TLS over TCP, no certificate check (sslmode=require).
    std::string tls() const { return conninfo_; }
    // TLS with the server certificate checked against the sandbox's root.
    std::string verify_full() const {
        return "host=localhost port=" + var("PQPOOL_TEST_PORT") + " dbname=" + var("PQPOOL_TEST_DBNAME") +
               " user=" + var("PQPOOL_TEST_USER") +
               " sslmode=verify-full sslrootcert=" + var("PQPOOL_TEST_SSLROOTCERT");
    }
    // Plain TCP.
    std::string plain() const { return base() + " sslmode=disable"; }
    // The Unix socket.
    std::string socket() const {
        return "host=" + var("PQPOOL_TEST_SOCKET_DIR") + " port=" + var("PQPOOL_TEST_PORT") +
               " dbname=" + var("PQPOOL_TEST_DBNAME") + " user=" + var("PQPOOL_TEST_USER");
    }
    // The password-authenticated role over TLS, with the given password.
    std::string password_role(const std::string& password) const {
        return "host=" + var("PQPOOL_TEST_HOST") + " port=" + var("PQPOOL_TEST_PORT") +
               " dbname=" + var("PQPOOL_TEST_DBNAME") + " user=" + var("PQPOOL_TEST_PASSWORD_USER") +
               " password=" + password + " sslmode=require";
    }
    std::string password() const { return var("PQPOOL_TEST_PASSWORD"); }
    // PgBouncer 1.18 in transaction mode in front of the server (`pg-sandbox start
    // --pgbouncer`): plain TCP (it has no client certificate), trust auth, and only
    // the database and user its pgbouncer.ini names.
    std::string pgbouncer() const {
        return "host=127.0.0.1 port=" + var("PQPOOL_TEST_PGBOUNCER_PORT") +
               " dbname=pqpool user=pqpool sslmode=disable";
    }

    // Runs `scripts/pg-sandbox ctl --state FILE <what>` (start, stop, restart).
    void ctl(const std::string& what) const {
        const std::string cmd = "'" + var("PQPOOL_SANDBOX_SCRIPT") + "' ctl --state '" + state_file_ + "' " + what;
        if (std::system(cmd.c_str()) != 0) throw std::runtime_error("pqpool test sandbox: failed: " + cmd);
    }

private:
    std::string base() const {
        return "host=" + var("PQPOOL_TEST_HOST") + " port=" + var("PQPOOL_TEST_PORT") +
               " dbname=" + var("PQPOOL_TEST_DBNAME") + " user=" + var("PQPOOL_TEST_USER");
    }

    static sandbox load() {
        sandbox s;
        if (const char* ci = std::getenv("PQPOOL_TEST_CONNINFO"); ci && *ci) {
            s.conninfo_ = ci;
            s.origin_ = "PQPOOL_TEST_CONNINFO points at an existing server";
            return s;
        }
        const char* state = std::getenv("PQPOOL_SANDBOX_STATE");
        if (!state || !*state)
            throw std::runtime_error("pqpool test sandbox: no server. Run the tests through ctest (which starts "
                                     "scripts/pg-sandbox), or set PQPOOL_TEST_CONNINFO");
        std::ifstream in(state);
        if (!in)
            throw std::runtime_error(std::string("pqpool test sandbox: cannot read the state file ") + state +
                                     " (did the sandbox fixture fail to start? see its test output)");
        for (std::string line; std::getline(in, line);) {
            auto eq = line.find('=');
            if (eq != std::string::npos) s.vars_[line.substr(0, eq)] = line.substr(eq + 1);
        }
        s.state_file_ = state;
        s.origin_ = std::string("state file ") + state;
        s.conninfo_ = s.var("PQPOOL_TEST_CONNINFO");
        return s;
    }

    std::map<std::string, std::string> vars_;
    std::string conninfo_, state_file_, origin_;
};

} // namespace pqpool::test
