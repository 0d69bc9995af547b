#pragma once

// The floor: the pool a careful programmer writes by hand (a mutex, a
// condition variable, a vector), with no validation, recycling or retry.

#include <condition_variable>
#include <mutex>
#include <vector>

namespace pqpool::bench {

template <class Handle>
class handwritten_pool {
public:
    template <class Open>
    handwritten_pool(std::size_t n, Open open) {
        for (std::size_t i = 0; i < n; ++i) idle_.push_back(open());
    }
    Handle acquire() {
        std::unique_lock lock(m_);
        cv_.wait(lock, [&] { return !idle_.empty(); });
        Handle h = idle_.back();
        idle_.pop_back();
        return h;
    }
    void release(Handle h) {
        {
            std::lock_guard lock(m_);
            idle_.push_back(h);
        }
        cv_.notify_one();
    }
    std::vector<Handle>& handles() { return idle_; }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<Handle> idle_;
};

} // namespace pqpool::bench
