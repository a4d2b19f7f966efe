// BackgroundSyncer (codec/container.h): fdatasync on a thread of its own.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>
#include <utility>

#include "codec/container.h"

namespace zipnn {

namespace {
constexpr uint64_t kSyncStep = 8u << 20;
}  // namespace

std::unique_ptr<BackgroundSyncer> BackgroundSyncer::Start(int fd, std::string label) {
  UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!dup.valid()) return nullptr;
  std::unique_ptr<BackgroundSyncer> s(new BackgroundSyncer(std::move(dup), std::move(label)));
  try {
    s->thread_ = std::thread([p = s.get()] { p->Loop(); });
  } catch (const std::system_error&) {
    return nullptr;
  }
  return s;
}

BackgroundSyncer::~BackgroundSyncer() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void BackgroundSyncer::Wrote(uint64_t bytes) {
  {
    std::lock_guard lock(mu_);
    if ((unsynced_ += bytes) < kSyncStep) return;
    unsynced_ = 0;
    requested_ = true;
  }
  cv_.notify_one();
}

void BackgroundSyncer::Request() {
  {
    std::lock_guard lock(mu_);
    unsynced_ = 0;
    requested_ = true;
  }
  cv_.notify_one();
}

Status BackgroundSyncer::Drain() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [this] { return !running_ && !requested_; });
  unsynced_ = 0;
  return std::exchange(error_, Status::Ok());
}

void BackgroundSyncer::Loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return requested_ || stop_; });
    if (stop_) return;
    requested_ = false;
    running_ = true;
    lock.unlock();
    const int rc = ::fdatasync(fd_.get());
    const int err = errno;
    lock.lock();
    running_ = false;
    if (rc != 0 && error_.ok()) error_ = Status::FromErrno(err, label_ + ": background fdatasync");
    idle_cv_.notify_all();
  }
}

}  // namespace zipnn
