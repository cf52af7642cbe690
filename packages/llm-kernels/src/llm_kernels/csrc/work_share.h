// Work sharing for the kernels' parallel loops (linear_rows.cpp, quant_rows.cpp,
// decode_layers.cpp): units [0, n) split between the T ids of a parallel region. Each id owns
// a contiguous share and takes it front to back (long sequential reads of the weights, which
// the hardware prefetches well); a thread done with its own shares takes units from the back
// of the others', so a thread that a busy host holds up does not keep the rest waiting. Which
// thread computes a unit never changes what the unit computes.

#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace {

class WorkShares {
 public:
  WorkShares() = default;
  WorkShares(int64_t n, int64_t ids) { init(n, ids); }

  void init(int64_t n, int64_t ids) {
    shares_.reset(new Share[ids]);
    ids_ = ids;
    for (int64_t t = 0; t < ids; ++t) shares_[t].init(n * t / ids, n * (t + 1) / ids);
  }

  // f(unit) for the units a thread carrying ids [id_begin, id_end) gets.
  template <typename F>
  void run(int64_t id_begin, int64_t id_end, F&& f) {
    for (int64_t t = id_begin; t < id_end; ++t)
      for (int64_t u; (u = shares_[t].take(true)) >= 0;) f(u);
    for (int64_t k = 1; k < ids_; ++k) {
      const int64_t t = (id_begin + k) % ids_;
      if (t >= id_begin && t < id_end) continue;
      for (int64_t u; (u = shares_[t].take(false)) >= 0;) f(u);
    }
  }

 private:
  // units [front, back) in one atomic word
  struct alignas(64) Share {
    std::atomic<uint64_t> range{0};
    void init(int64_t front, int64_t back) {
      range.store(uint64_t(front) | (uint64_t(back) << 32), std::memory_order_relaxed);
    }
    int64_t take(bool front) {
      uint64_t r = range.load(std::memory_order_relaxed);
      for (;;) {
        const uint64_t f = r & 0xffffffffu, b = r >> 32;
        if (f >= b) return -1;
        const uint64_t next = front ? (f + 1) | (b << 32) : f | ((b - 1) << 32);
        if (range.compare_exchange_weak(r, next, std::memory_order_relaxed))
          return int64_t(front ? f : b - 1);
      }
    }
  };
  std::unique_ptr<Share[]> shares_;
  int64_t ids_ = 0;
};

}  // namespace
