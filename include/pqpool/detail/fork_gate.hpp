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
// Nested use would deadlock behind a waiting fork: a gated call never takes
// the gate again, and never forks.

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

    // One gated libpq call: counted in flight for its lifetime. Cost: an
    // uncontended lock and unlock, two atomic increments.
    class step {
    public:
        step() noexcept {
            const std::lock_guard<std::mutex> wait_for_fork(state().m);
            state().in_flight.fetch_add(1, std::memory_order_acq_rel);
        }
        ~step() { state().in_flight.fetch_sub(1, std::memory_order_acq_rel); }
        step(const step&) = delete;
        step& operator=(const step&) = delete;
    };

private:
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
        s.m.lock();
        // Steps are short; a host-name lookup may take longer: back off.
        auto pause = std::chrono::microseconds{20};
        while (s.in_flight.load(std::memory_order_acquire) != 0) {
            std::this_thread::sleep_for(pause);
            if (pause < std::chrono::milliseconds{1}) pause *= 2;
        }
    }
    static void parent() noexcept { state().m.unlock(); }
    static void child() noexcept { state().m.unlock(); }
};

} // namespace pqpool::detail
