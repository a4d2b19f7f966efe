#include "index/pack.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <utility>

namespace zipnn::index {

namespace {
constexpr size_t kWriteBufferSize = 8u << 20;
constexpr size_t kDirectWriteSize = 256u << 10;  // larger appends skip the buffer (no copy)
}  // namespace

std::string PackPath(const std::string& packs_dir, uint32_t pack_id) {
  char name[32];
  std::snprintf(name, sizeof(name), "/pack-%06u.znp", pack_id);
  return packs_dir + name;
}

Status PackReader::Read(uint32_t pack_id, uint64_t offset, std::span<uint8_t> out) {
  int fd = -1;
  {
    std::lock_guard lock(mutex_);
    auto it = fds_.find(pack_id);
    if (it == fds_.end()) {
      const std::string path = PackPath(dir_, pack_id);
      UniqueFd opened(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!opened.valid()) return Status::FromErrno(errno, path);
      it = fds_.emplace(pack_id, std::move(opened)).first;
    }
    fd = it->second.get();  // fds are never closed while the reader lives
  }
  Status st = PreadFull(fd, offset, out);
  if (!st.ok()) {
    return Status(st.code(),
                  PackPath(dir_, pack_id) + " at " + std::to_string(offset) + ": " + st.message());
  }
  return st;
}

Result<PackWriter> PackWriter::Open(const std::string& packs_dir, uint32_t pack_id,
                                    uint64_t committed) {
  const std::string path = PackPath(packs_dir, pack_id);
  PackWriter w;
  w.fd_.Reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!w.fd_.valid()) return Status::FromErrno(errno, path);
  const off_t size = ::lseek(w.fd_.get(), 0, SEEK_END);
  if (size < 0) return Status::FromErrno(errno, path);
  if (static_cast<uint64_t>(size) < committed) {
    return Status::Corrupt(path + ": " + std::to_string(size) + " bytes, but the index says " +
                           std::to_string(committed) + " are committed");
  }
  if (static_cast<uint64_t>(size) > committed) {
    if (::ftruncate(w.fd_.get(), static_cast<off_t>(committed)) != 0) {
      return Status::FromErrno(errno, path + ": truncating uncommitted bytes");
    }
  }
  w.id_ = pack_id;
  w.end_ = w.committed_ = w.flushed_ = committed;
  return w;
}

Status PackWriter::Append(std::span<const uint8_t> frame) {
  if (buffered_ + frame.size() > kWriteBufferSize || frame.size() >= kDirectWriteSize) {
    ZIPNN_RETURN_IF_ERROR(Flush());
  }
  if (frame.size() >= kDirectWriteSize) {
    ZIPNN_RETURN_IF_ERROR(Write(frame));
  } else {
    if (!buffer_.Reserve(kWriteBufferSize)) return Status::FromErrno(ENOMEM, "pack buffer");
    std::copy(frame.begin(), frame.end(), buffer_.data() + buffered_);
    buffered_ += frame.size();
  }
  end_ += frame.size();
  return Status::Ok();
}

Status PackWriter::Write(std::span<const uint8_t> bytes) {
  if (Status st = PwriteFull(fd_.get(), flushed_, bytes); !st.ok())
    return Status(st.code(), "pack " + st.message());
  // Start writeback now, so the sync before the commit has little left to wait for. Only a
  // hint: durability still comes from Sync.
  (void)::sync_file_range(fd_.get(), static_cast<off_t>(flushed_), static_cast<off_t>(bytes.size()),
                          SYNC_FILE_RANGE_WRITE);
  flushed_ += bytes.size();
  // Started at the first write: most writers (a mount, opening old packs) never write. Without
  // one, only Sync syncs.
  if (!syncer_) syncer_ = BackgroundSyncer::Start(fd_.get(), "pack " + std::to_string(id_));
  if (syncer_) syncer_->Wrote(bytes.size());
  return Status::Ok();
}

Status PackWriter::Flush() {
  if (buffered_ == 0) return Status::Ok();
  ZIPNN_RETURN_IF_ERROR(Write({buffer_.data(), buffered_}));
  buffered_ = 0;
  return Status::Ok();
}

Status PackWriter::Sync() {
  ZIPNN_RETURN_IF_ERROR(Flush());
  // A background sync under way leaves this one only the tail; its failure is ours too.
  if (syncer_) ZIPNN_RETURN_IF_ERROR(syncer_->Drain());
  if (::fdatasync(fd_.get()) != 0) return Status::FromErrno(errno, "pack fdatasync");
  return Status::Ok();
}

Status PackWriter::Truncate(uint64_t offset) {
  if (offset < committed_ || offset > end_) return Status::InvalidArgument("pack truncate");
  if (offset >= flushed_) {
    buffered_ = offset - flushed_;
  } else {
    buffered_ = 0;
    flushed_ = offset;
    if (::ftruncate(fd_.get(), static_cast<off_t>(offset)) != 0) {
      return Status::FromErrno(errno, "pack truncate");
    }
  }
  end_ = offset;
  return Status::Ok();
}

Status PackWriter::Rollback() {
  // Everything committed was synced before its commit: a background failure since concerns only
  // the bytes dropped here, and must not fail the next group.
  if (syncer_) (void)syncer_->Drain();
  buffered_ = 0;
  end_ = flushed_ = committed_;
  if (::ftruncate(fd_.get(), static_cast<off_t>(committed_)) != 0) {
    return Status::FromErrno(errno, "pack truncate");
  }
  return Status::Ok();
}

}  // namespace zipnn::index
