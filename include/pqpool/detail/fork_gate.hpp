#pragma once

// The fork gate: fork() waits until no thread of ours is inside a libpq
// connect step, and no new step starts until the fork is done.
//
// Why: a connect step (PQconnectStartParams, PQconnectPoll) runs code that
// takes process-wide locks: the resolver's, OpenSSL's (RAND_bytes, the
// SSL_CTX_new of a new TLS session), GSSAPI's (gss_indicate_mechs while libpq
// looks for Kerberos credentials for gssencmode=prefer). fork() copies only
// the calling thread, so a lock another thread held at that instant stays held
// forever in the child, and the child's first connect hangs on it. PQfinish
// frees TLS state under the same locks, so it is gated too.
//
// Each libpq call of a connect step is one `step`: for the duration of that
// one non-blocking call only (the host-name lookup inside
// PQconnectStartParams is the one call that may block, for as long as the
// resolver takes). A pthread_atfork prepare handler takes the gate's mutex and
// waits until no step is in flight; the mutex stays held across the fork, so
// a step that wants to start meanwhile waits for the fork (a stream of steps
// cannot starve a fork: once the mutex is the fork's, no step starts). The
// parent and child handlers release it: the forking thread is the one that
// holds it, in both processes, so an ordinary unlock is valid in the child
// too (unlike a rwlock, which glibc tells apart by a thread id the child's
// thread no longer has).
//
// Besides libpq's steps, the gate covers other code of ours that takes such
// locks on a connect's path: the credentials callable (the user's code: an
// HTTP client, a secrets store's library), RDS IAM signing (OpenSSL), the TLS
// file checks and PQconndefaults (NSS) in the connector's constructor, and the
// short sections under the locks of our own shared state (the recent secrets,
// the RDS token cache), so that no such lock is ever held at a fork.
//
// Steps nest: a thread already inside one (a credentials callable that builds
// a connector, or signs an RDS token) neither takes the gate's mutex again
// (a fork waiting on it would wait for this very thread) nor counts twice.
// And a thread inside a step may fork itself (a callable that runs a
// program): its prepare handler first takes its own step out of the count
// (and the parent and child handlers put it back), so that neither its own
// fork nor another thread's fork at the same moment waits for it.

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

namespace pqpool::detail {

class fork_gate {
public:
    // Registers the atfork handlers, once per process. Cheap after the first
    // call (the static's guard). If registration fails (ENOMEM), the gate
    // still counts steps and forks simply do not wait.
    static void install() noexcept {
        static const bool installed = ::pthread_atfork(&prepare, &parent, &child) == 0;
        (void)installed;
    }

    // One gated call: counted in flight for its lifetime (the outermost of
    // nested ones only). Cost: an uncontended lock and unlock, two atomic
    // increments; nested, a thread-local increment.
    class step {
    public:
        step() noexcept {
            if (depth++ != 0) return;
            const std::lock_guard<std::mutex> wait_for_fork(state().m);
            state().in_flight.fetch_add(1, std::memory_order_acq_rel);
        }
        ~step() {
            if (--depth == 0) state().in_flight.fetch_sub(1, std::memory_order_acq_rel);
        }
        step(const step&) = delete;
        step& operator=(const step&) = delete;
    };

private:
    // How many steps this thread is inside (nested ones included).
    static inline thread_local int depth = 0;

    struct shared {
        std::mutex m;
        std::atomic<int> in_flight{0};
    };

    static shared& state() noexcept {
        // Never destroyed: a thread may still connect while statics die.
        static shared* const s = new shared;
        return *s;
    }

    static void prepare() noexcept {
        shared& s = state();
        // A fork from inside a step: that step is not waited for.
        if (depth != 0) s.in_flight.fetch_sub(1, std::memory_order_acq_rel);
        s.m.lock();
        // Steps are short; a host-name lookup or a credentials callable may
        // take longer: back off.
        auto pause = std::chrono::microseconds{20};
        while (s.in_flight.load(std::memory_order_acquire) != 0) {
            std::this_thread::sleep_for(pause);
            if (pause < std::chrono::milliseconds{1}) pause *= 2;
        }
    }
    static void after() noexcept {
        shared& s = state();
        if (depth != 0) s.in_flight.fetch_add(1, std::memory_order_acq_rel);
        s.m.unlock();
    }
    static void parent() noexcept { after(); }
    static void child() noexcept { after(); }
};

} // namespace pqpool::detail
