// MapGuard: a SIGBUS and SIGSEGV handler that knows the address ranges of open index maps.
#include "index/map_guard.h"

#include <errno.h>  // program_invocation_short_name
#include <lmdb.h>
#include <signal.h>
#include <sys/sysmacros.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>

namespace zipnn::index::lmdb {
namespace {

// The handler reads these, so they are fixed slots of atomics, not a container (a signal
// handler may not take a lock or follow a pointer another thread is replacing).
struct Slot {
  std::atomic<bool> used{false};
  std::atomic<uintptr_t> begin{0}, end{0};
  char message[768] = {};
  std::atomic<size_t> length{0};
};
constexpr int kSlots = 16;
Slot slots[kSlots];
struct sigaction previous[2];  // SIGBUS's and SIGSEGV's handling before ours
// LMDB's code: a fault there, whatever the address, is LMDB acting on a damaged page (a flag
// flipped in a node sends it to a sub-cursor that does not exist). Set once, before the handler.
uintptr_t lmdb_code_begin = 0, lmdb_code_end = 0;

uintptr_t FaultingInstruction([[maybe_unused]] void* context) {
#if defined(__x86_64__)
  return static_cast<uintptr_t>(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RIP]);
#elif defined(__aarch64__)
  return static_cast<uintptr_t>(static_cast<ucontext_t*>(context)->uc_mcontext.pc);
#else
  return 0;
#endif
}

// The first mapping of this process (a line of /proc/self/maps: range, offset, device, inode,
// the line itself) that `match` accepts, as [*begin, *end).
template <class Match>
bool FindMapping(Match match, uintptr_t* begin, uintptr_t* end) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long long b, e, offset, ino;
    unsigned major, minor;
    if (std::sscanf(line.c_str(), "%llx-%llx %*s %llx %x:%x %llu", &b, &e, &offset, &major, &minor,
                    &ino) == 6 &&
        match(b, e, offset, makedev(major, minor), ino, line)) {
      *begin = b;
      *end = e;
      return true;
    }
  }
  return false;
}

// The executable mapping of the shared liblmdb that holds mdb_cursor_get (none when LMDB is
// linked statically: the range would then be the program's own code).
void FindLmdbCode() {
  const auto probe = reinterpret_cast<uintptr_t>(&mdb_cursor_get);
  FindMapping(
      [probe](uintptr_t b, uintptr_t e, uint64_t, dev_t, uint64_t, const std::string& line) {
        return probe >= b && probe < e && line.find("liblmdb") != std::string::npos;
      },
      &lmdb_code_begin, &lmdb_code_end);
}

void OnFault(int sig, siginfo_t* info, void* context) {
  // Sent by kill or raise (si_code <= 0): not a fault of any access; its default action is due.
  const bool sent = info->si_code <= 0;
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const uintptr_t pc = FaultingInstruction(context);
  const bool in_lmdb = pc >= lmdb_code_begin && pc < lmdb_code_end;
  for (Slot& s : slots) {
    if (!sent && s.used.load() && s.end.load() != 0 &&
        (in_lmdb || (addr >= s.begin.load() && addr < s.end.load()))) {
      [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, s.message, s.length.load());
      ::_exit(1);
    }
  }
  // Not an index: as before us (a handler of its own, or the default action when the faulting
  // access runs again).
  const struct sigaction& old = previous[sig == SIGBUS ? 0 : 1];
  if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction != nullptr) {
    old.sa_sigaction(sig, info, context);
  } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
    old.sa_handler(sig);
  } else {
    ::signal(sig, SIG_DFL);
    if (sent) ::raise(sig);  // (a fault instead recurs when its access runs again)
  }
}

void Install() {
  FindLmdbCode();
  struct sigaction sa = {};
  sa.sa_sigaction = OnFault;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, &previous[0]);
  ::sigaction(SIGSEGV, &sa, &previous[1]);
}

}  // namespace

void MapGuard::WatchFile(dev_t dev, ino_t ino, const std::string& path) {
  // The file's mapping from its start: LMDB does not tell where it put it (mdb_env_info's
  // address is a fixed map's only).
  uintptr_t begin, end;
  if (FindMapping([dev, ino](uintptr_t, uintptr_t, uint64_t offset, dev_t d, uint64_t i,
                             const std::string&) { return d == dev && i == ino && offset == 0; },
                  &begin, &end)) {
    Watch(reinterpret_cast<const void*>(begin), end - begin, path);
  }
}

void MapGuard::Watch(const void* addr, size_t size, const std::string& path) {
  static std::once_flag installed;
  std::call_once(installed, Install);
  if (slot_ < 0) {
    for (int i = 0; i < kSlots && slot_ < 0; ++i) {
      bool expected = false;
      if (slots[i].used.compare_exchange_strong(expected, true)) slot_ = i;
    }
    if (slot_ < 0) return;
  }
  Slot& s = slots[slot_];
  s.end = 0;  // (first: no range the handler could match while the message changes)
  s.begin = 0;
  const std::string msg = std::string(program_invocation_short_name) + ": " + path +
                          ": damaged or truncated (LMDB faulted on its pages); stopping. "
                          "Restore the index from a backup, or re-import into a new store.\n";
  const size_t n = std::min(msg.size(), sizeof(s.message));
  std::memcpy(s.message, msg.data(), n);
  s.length = n;
  // A damaged node's offsets reach at most 64 KiB past its page.
  const auto begin = reinterpret_cast<uintptr_t>(addr);
  s.begin = begin;  // (then the end: with end 0 the range matches nothing meanwhile)
  s.end = begin + size + (64u << 10);
}

void MapGuard::Unwatch() {
  if (slot_ < 0) return;
  Slot& s = slots[slot_];
  s.end = 0;
  s.begin = 0;
  s.used = false;
  slot_ = -1;
}

}  // namespace zipnn::index::lmdb
