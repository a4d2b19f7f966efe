// The table of libfuse's low-level callbacks: each calls its FileSystem operation, and no
// exception crosses back into libfuse's C code.
#include <spdlog/spdlog.h>

#include <cstring>
#include <new>

#include "fs/filesystem.h"

namespace zipnn::fs {
namespace {

// Exceptions never cross into libfuse's C code: whatever escapes an operation becomes an errno.
template <class F>
void Guarded(fuse_req_t req, F&& op) {
  try {
    op();
  } catch (const std::bad_alloc&) {
    fuse_reply_err(req, ENOMEM);
  } catch (const std::exception& e) {
    spdlog::error("internal error: {}", e.what());
    fuse_reply_err(req, EIO);
  }
}

}  // namespace

const fuse_lowlevel_ops& FileSystem::Ops() {
  static const fuse_lowlevel_ops ops = [] {
    fuse_lowlevel_ops o;
    std::memset(&o, 0, sizeof o);
    o.init = [](void* userdata, fuse_conn_info* conn) {
      static_cast<FileSystem*>(userdata)->Init(conn);
    };
    o.lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
      Guarded(req, [&] { Self(req)->Lookup(req, parent, name); });
    };
    o.forget = [](fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
      try {
        Self(req)->Forget(ino, nlookup);
      } catch (...) {
      }
      fuse_reply_none(req);
    };
    o.forget_multi = [](fuse_req_t req, size_t count, fuse_forget_data* forgets) {
      try {
        for (size_t i = 0; i < count; ++i) Self(req)->Forget(forgets[i].ino, forgets[i].nlookup);
      } catch (...) {
      }
      fuse_reply_none(req);
    };
    o.getattr = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
      Guarded(req, [&] { Self(req)->GetAttr(req, ino); });
    };
    o.readlink = [](fuse_req_t req, fuse_ino_t ino) {
      Guarded(req, [&] { Self(req)->ReadLink(req, ino); });
    };
    o.open = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->Open(req, ino, fi); });
    };
    o.read = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->Read(req, ino, size, off, fi); });
    };
    o.release = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->Release(req, fi); });
    };
    o.opendir = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->OpenDir(req, ino, fi); });
    };
    o.readdir = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->ReadDir(req, ino, size, off, fi, false); });
    };
    o.readdirplus = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->ReadDir(req, ino, size, off, fi, true); });
    };
    o.releasedir = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->ReleaseDir(req, fi); });
    };
    o.statfs = [](fuse_req_t req, fuse_ino_t) { Guarded(req, [&] { Self(req)->StatFs(req); }); };
    o.lseek = [](fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi) {
      Guarded(req, [&] { Self(req)->Lseek(req, ino, off, whence, fi); });
    };
    o.getxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
      Guarded(req, [&] { Self(req)->GetXattr(req, ino, name, size); });
    };
    o.listxattr = [](fuse_req_t req, fuse_ino_t ino, size_t size) {
      Guarded(req, [&] { Self(req)->ListXattr(req, ino, size); });
    };
    return o;
  }();
  return ops;
}

}  // namespace zipnn::fs
