// zipnnfs filesystem: mounts a store (index/) with FUSE so that unmodified programs read the
// original files. Public entry points for the `zipnnfs` tool.
#pragma once

#include <string>

#include "codec/status.h"

namespace zipnn::fs {

// `zipnnfs [mount] STORE MOUNTPOINT [-f] [-d] [-s] [-o opt,...]`: argv[0] is the program name
// and argv holds no "mount" word. Mounts, serves until unmounted (fusermount3 -u, SIGINT,
// SIGTERM) and returns the exit code. Daemonizes unless -f; errors before the mount is ready
// are reported by the calling process either way.
int MountMain(int argc, char** argv);

// The mount options, for `zipnnfs --help`.
std::string MountUsage();

// The live statistics (JSON) of the zipnnfs mounted at `mountpoint`; kNotFound if it is not one.
Result<std::string> ReadMountStats(const std::string& mountpoint);

}  // namespace zipnn::fs
