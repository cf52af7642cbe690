// Waiting for another thread to change an atomic word: spin first (the other side is usually
// microseconds away), then sleep on a futex (std::atomic::wait), counted in `sleepers` so that
// the writer notifies only when someone sleeps. Used by decode_layers' barrier and by the
// thread team (team.cpp).

#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace {

// Returns once `word` no longer holds `old`: spins for up to `spin`, then sleeps. The writer
// stores the new value (seq_cst), then notifies if `sleepers` (seq_cst) is above zero.
template <typename T>
void wait_while(const std::atomic<T>& word, T old, std::chrono::microseconds spin,
                std::atomic<int32_t>& sleepers) {
  const auto start = std::chrono::steady_clock::now();
  for (int64_t spins = 1; word.load(std::memory_order_acquire) == old; ++spins) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if (spins % 64 == 0 && std::chrono::steady_clock::now() - start >= spin) {
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      while (word.load(std::memory_order_seq_cst) == old) word.wait(old, std::memory_order_seq_cst);
      sleepers.fetch_sub(1, std::memory_order_relaxed);
      return;
    }
  }
}

}  // namespace
