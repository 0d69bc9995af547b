#pragma once

// The idle connections of a pool: a stack of pointers whose capacity only
// grows, and only when asked (on the slow path). A push within the capacity
// is a store and an increment, with no capacity check of its own and nothing
// that can throw, so the release fast path stays a handful of instructions
// (std::vector::push_back keeps its growth path in line or calls out of line).

#include <cstddef>
#include <memory>
#include <new>
#include <utility>

namespace pqpool::detail {

template <class T>
class pointer_stack {
public:
    pointer_stack() noexcept = default;
    pointer_stack(const pointer_stack&) = delete;
    pointer_stack& operator=(const pointer_stack&) = delete;
    pointer_stack(pointer_stack&& other) noexcept
        : data_(std::move(other.data_)),
          size_(std::exchange(other.size_, 0)),
          capacity_(std::exchange(other.capacity_, 0)) {}
    pointer_stack& operator=(pointer_stack&& other) noexcept {
        data_ = std::move(other.data_);
        size_ = std::exchange(other.size_, 0);
        capacity_ = std::exchange(other.capacity_, 0);
        return *this;
    }

    bool empty() const noexcept { return size_ == 0; }
    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return capacity_; }

    // Preconditions: not empty / below capacity.
    T* pop() noexcept { return data_[--size_]; }
    void push(T* p) noexcept { data_[size_++] = p; }

    // Makes room for `n` in all; false when out of memory (nothing changed).
    bool reserve(std::size_t n) noexcept {
        if (n <= capacity_) return true;
        std::unique_ptr<T*[]> bigger(new (std::nothrow) T*[n]);
        if (!bigger) return false;
        for (std::size_t i = 0; i < size_; ++i) bigger[i] = data_[i];
        data_ = std::move(bigger);
        capacity_ = n;
        return true;
    }

    // The bottom of the stack: the element pushed longest ago.
    T* front() const noexcept { return data_[0]; }
    T* operator[](std::size_t i) const noexcept { return data_[i]; }
    // Removes element i, keeping the order of the rest.
    void erase(std::size_t i) noexcept {
        for (; i + 1 < size_; ++i) data_[i] = data_[i + 1];
        --size_;
    }
    void clear() noexcept { size_ = 0; }

    T* const* begin() const noexcept { return data_.get(); }
    T* const* end() const noexcept { return data_.get() + size_; }

private:
    std::unique_ptr<T*[]> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

} // namespace pqpool::detail
