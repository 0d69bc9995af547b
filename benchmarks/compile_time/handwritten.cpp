// Compile-time probe, the reference for all_policies.cpp: a pool written by hand
// over the standard headers such a pool needs (<mutex>, <condition_variable>,
// <vector>, <string>, <chrono>, <thread>, <optional>, <memory>, <atomic>) and
// libpq, used the same way (construct, acquire, SELECT 1). What pqpool adds to a
// translation unit is the difference between the two.

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

namespace {

class handwritten_pool {
    struct give_back {
        handwritten_pool* pool;
        void operator()(PGconn* c) const noexcept { pool->release(c); }
    };

public:
    using lease = std::unique_ptr<PGconn, give_back>;

    handwritten_pool(std::string conninfo, std::size_t size, std::chrono::milliseconds wait)
        : conninfo_(std::move(conninfo)),
          size_(size),
          wait_(wait) {}
    handwritten_pool(const handwritten_pool&) = delete;
    handwritten_pool& operator=(const handwritten_pool&) = delete;
    ~handwritten_pool() {
        for (PGconn* c : idle_) PQfinish(c);
    }

    std::optional<lease> acquire() {
        std::unique_lock lock(m_);
        if (!cv_.wait_for(lock, wait_, [&] { return !idle_.empty() || open_ < size_; })) return std::nullopt;
        if (!idle_.empty()) {
            PGconn* c = idle_.back();
            idle_.pop_back();
            return lease(c, give_back{this});
        }
        ++open_;
        lock.unlock();
        PGconn* c = PQconnectdb(conninfo_.c_str());
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            lock.lock();
            --open_;
            cv_.notify_one();
            return std::nullopt;
        }
        ++connects_;
        return lease(c, give_back{this});
    }

    std::size_t connects() const noexcept { return connects_.load(); }

private:
    void release(PGconn* c) noexcept {
        if (PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) != PQTRANS_IDLE) {
            PQfinish(c);
            std::lock_guard lock(m_);
            --open_;
        } else {
            std::lock_guard lock(m_);
            idle_.push_back(c);
        }
        cv_.notify_one();
    }

    std::string conninfo_;
    std::size_t size_;
    std::chrono::milliseconds wait_;
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<PGconn*> idle_;
    std::size_t open_ = 0;
    std::atomic<std::size_t> connects_{0};
};

} // namespace

int main(int argc, char** argv) {
    handwritten_pool pool{argc > 1 ? argv[1] : "host=localhost", 2, 1s};
    auto conn = pool.acquire();
    if (!conn) return 1;
    std::this_thread::yield();
    PGresult* r = PQexec(conn->get(), "SELECT 1");
    const int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok && pool.connects() == 1 ? 0 : 1;
}
