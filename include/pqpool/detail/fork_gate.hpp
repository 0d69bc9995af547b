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
// Each libpq call of a connect step holds the gate shared for the duration of
// that one non-blocking call only (the host-name lookup inside
// PQconnectStartParams is the one call that may block, for as long as the
// resolver takes). A pthread_atfork prepare handler takes it exclusively, so
// fork() waits for the steps in flight and new ones wait for the fork. The
// lock prefers writers: a stream of connects cannot starve a fork.
//
// In the child the lock is initialised afresh instead of unlocked: glibc tells
// a write unlock from a read unlock by comparing the writer's thread id with
// the caller's, and fork() gives the child's only thread a new id. Nobody else
// can hold it there: the child has one thread, and it held the lock
// exclusively at the fork.
//
// Nested use would deadlock behind a waiting fork (the lock is
// non-recursive): a gated call never takes the gate again.

#include <pthread.h>

namespace pqpool::detail {

class fork_gate {
public:
    // Registers the atfork handlers, once per process. Cheap after the first
    // call (one acquire load in the static's guard). If registration fails
    // (ENOMEM), the gate still works and forks simply do not wait.
    static void install() noexcept {
        static const bool installed = ::pthread_atfork(&prepare, &parent, &child) == 0;
        (void)installed;
    }

    // Holds the gate shared for its lifetime: around one libpq call.
    class step {
    public:
        step() noexcept : held_(::pthread_rwlock_rdlock(&lock()) == 0) {}
        ~step() {
            if (held_) ::pthread_rwlock_unlock(&lock());
        }
        step(const step&) = delete;
        step& operator=(const step&) = delete;

    private:
        // EAGAIN (the reader count is full) leaves the step ungated rather
        // than stuck; it cannot happen with a few threads.
        bool held_;
    };

private:
    static void init(pthread_rwlock_t& l) noexcept {
        pthread_rwlockattr_t attr;
        ::pthread_rwlockattr_init(&attr);
#if defined(__GLIBC__)
        ::pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
        ::pthread_rwlock_init(&l, &attr);
        ::pthread_rwlockattr_destroy(&attr);
    }

    static pthread_rwlock_t& lock() noexcept {
        // Never destroyed: a thread may still connect while statics die.
        static pthread_rwlock_t* const l = [] {
            static pthread_rwlock_t storage;
            init(storage);
            return &storage;
        }();
        return *l;
    }

    // Written only by the forking thread between prepare and parent; two
    // threads forking at once serialise on the lock itself.
    static bool& writing() noexcept {
        static bool w = false;
        return w;
    }

    static void prepare() noexcept { writing() = ::pthread_rwlock_wrlock(&lock()) == 0; }
    static void parent() noexcept {
        if (writing()) {
            writing() = false;
            ::pthread_rwlock_unlock(&lock());
        }
    }
    static void child() noexcept {
        writing() = false;
        init(lock());
    }
};

} // namespace pqpool::detail
