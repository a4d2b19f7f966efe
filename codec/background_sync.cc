// BackgroundSyncer (codec/container.h): fdatasync on a thread of its own.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <utility>

#include "codec/container.h"

namespace zipnn {

std::unique_ptr<BackgroundSyncer> BackgroundSyncer::Start(int fd) {
  UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!dup.valid()) return nullptr;
  std::unique_ptr<BackgroundSyncer> s(new BackgroundSyncer(std::move(dup)));
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

void BackgroundSyncer::Request() {
  {
    std::lock_guard lock(mu_);
    requested_ = true;
  }
  cv_.notify_one();
}

Status BackgroundSyncer::Drain() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [this] { return !running_ && !requested_; });
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
    if (rc != 0 && error_.ok()) error_ = Status::FromErrno(err, "pack fdatasync (background)");
    idle_cv_.notify_all();
  }
}

}  // namespace zipnn
