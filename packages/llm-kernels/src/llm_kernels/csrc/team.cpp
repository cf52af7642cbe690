// The library's own team of threads, for decode_layers' one parallel region per decode step.
//
// Why not torch's OpenMP (at::parallel_for): libgomp keeps a team of threads per thread that
// opens a parallel region, and once it manages more threads than the machine has CPUs (a
// second thread using torch: the engine's worker beside the main thread, a server's request
// thread) it stops spinning between regions (GOMP_SPINCOUNT's throttled count, about 100
// spins): every region then wakes its threads from a futex. On a 2-core VM, requests through
// an engine (its step on the worker thread) never exceeded about 71 tokens/s where the same
// steps from the main thread reached 85-96 in the same rounds, and llama.cpp beside an idle
// engine ran at 0.6x (llama-cpp-python's build loads the same libgomp); docs/benchmarks.md.
// This team is one per process, whatever thread calls: its helpers spin for a while after a
// step (the next one follows within a millisecond) and then sleep on a futex, as libgomp
// does unthrottled.
//
// One caller at a time: a call that finds the team busy (another thread's step in flight)
// returns false and the caller runs its region with at::parallel_for instead.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include <pthread.h>
#include <signal.h>

#include "spin_wait.h"

namespace {

// How long an idle helper spins before it sleeps: OMP_WAIT_POLICY's meaning as libgomp reads
// it (passive: sleep at once; active: keep spinning, here for a second), else 3 ms (libgomp's
// default blocking time when the policy is not set).
std::chrono::microseconds idle_spin() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  if (policy != nullptr && strcasecmp(policy, "passive") == 0) return std::chrono::microseconds(0);
  if (policy != nullptr && strcasecmp(policy, "active") == 0)
    return std::chrono::microseconds(1000000);
  return std::chrono::microseconds(3000);
}

class Team {
 public:
  // The process's team (a new one in a forked child: the parent's helpers do not exist there).
  static Team& get() {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { instance_ = nullptr; }); });
    Team* team = instance_.load(std::memory_order_acquire);
    if (team == nullptr) {
      Team* fresh = new Team();  // never freed: its helpers use it to the end
      if (instance_.compare_exchange_strong(team, fresh, std::memory_order_acq_rel)) {
        team = fresh;
      } else {
        delete fresh;  // another thread's came first (no helpers started yet)
      }
    }
    return *team;
  }

  bool run(int64_t T, const std::function<void(int64_t)>& body) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    const uint32_t round = round_.load(std::memory_order_relaxed);
    while (helpers_ < T - 1) {
      start_helper(helpers_ + 1, round);  // counted once it runs (std::thread may throw)
      ++helpers_;
    }
    // every helper acknowledges every round (those past T - 1 without work), so that none can
    // still be reading this round's job when the next is posted
    job_ = &body;
    ids_ = T;
    error_ = nullptr;
    pending_.store(uint32_t(helpers_), std::memory_order_relaxed);
    round_.store(round + 1, std::memory_order_seq_cst);
    if (round_sleepers_.load(std::memory_order_seq_cst) > 0) round_.notify_all();
    work(0);
    for (uint32_t left; (left = pending_.load(std::memory_order_acquire)) != 0;)
      wait_while(pending_, left, spin_, pending_sleepers_);
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void start_helper(int64_t id, uint32_t round) {
    // helpers take no signals: the process's handlers run on its own threads (the mask is
    // the creating thread's while the helper starts, restored even if std::thread throws)
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct Restore {
      const sigset_t* mask;
      ~Restore() { pthread_sigmask(SIG_SETMASK, mask, nullptr); }
    } restore{&old};
    std::thread([this, id, round] { help(id, round); }).detach();
  }

  void help(int64_t id, uint32_t seen) {
    for (;;) {
      wait_while(round_, seen, spin_, round_sleepers_);
      ++seen;  // the caller posts no new round before this one is acknowledged
      if (id < ids_) work(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1 &&
          pending_sleepers_.load(std::memory_order_seq_cst) > 0)
        pending_.notify_all();
    }
  }

  void work(int64_t id) {
    try {
      (*job_)(id);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock_);
      if (!error_) error_ = std::current_exception();
    }
  }

  static inline std::atomic<Team*> instance_{nullptr};
  std::mutex busy_;           // held by the calling thread for the whole region
  int64_t helpers_ = 0;       // threads started, ids 1..helpers_
  const std::chrono::microseconds spin_ = idle_spin();
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t ids_ = 0;           // this round's ids: 0 (the caller) .. ids_ - 1
  std::mutex error_lock_;
  std::exception_ptr error_;  // the first exception a thread's share threw
  alignas(64) std::atomic<uint32_t> round_{0};
  alignas(64) std::atomic<uint32_t> pending_{0};  // helpers yet to acknowledge this round
  alignas(64) std::atomic<int32_t> round_sleepers_{0};
  alignas(64) std::atomic<int32_t> pending_sleepers_{0};
};

}  // namespace

// Runs body(id) for id in [0, T) on T threads (the caller as id 0) and returns true, rethrowing
// the first exception a share threw; returns false without running anything when the team is
// busy with another caller's region.
bool llm_kernels_team_run(int64_t T, const std::function<void(int64_t)>& body) {
  return Team::get().run(T, body);
}
