// zipnnfs: manage a store of compressed model files (init, import, export, cat, stats, fsck, gc).
// `zipnnfs STORE MOUNTPOINT` mounts a store (fs/).

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "codec/container.h"
#include "fs/fs.h"
#include "tools/file_io.h"
#include "tools/import_bench.h"
#include "tools/store_commands.h"

#ifndef ZIPNN_SOURCE_DIR
#define ZIPNN_SOURCE_DIR "."
#endif
#ifndef ZIPNN_VERSION
#define ZIPNN_VERSION "dev"
#endif

namespace {

using namespace zipnn;
using namespace zipnn::tool::store;

constexpr int kExitUsage = 2;

// CLI11 reads "-1" as 2^64 - 1 and saturates out-of-range numbers: byte counts are checked
// as plain decimal numbers that fit in 64 bits, or sizes such as 4K or 1M (as zipnn cat takes
// them), rewritten as plain numbers, first.
const CLI::Validator kByteCount(
    [](std::string& s) -> std::string {
      if (ParseDecimal(s)) return std::string();
      const std::optional<uint64_t> size = ParseSize(s);
      if (!size) return "not a byte count (e.g. 4096, 4K, 1M; at most 2^64 - 1): " + s;
      s = std::to_string(*size);
      return std::string();
    },
    "BYTES");

}  // namespace

int main(int argc, char** argv) {
  zipnn::tool::HoldStandardDescriptors();
  zipnn::tool::RaiseDescriptorLimit();
  // Mounting follows the conventions of sshfs and squashfuse (`zipnnfs STORE MOUNTPOINT -o ...`),
  // parsed by libfuse; the store tools are subcommands.
  if (argc >= 2 && std::string_view(argv[1]) == "mount") {
    argv[1] = argv[0];
    return zipnn::fs::MountMain(argc - 1, argv + 1);
  }
  CLI::App app{"zipnnfs: a store of losslessly compressed AI model files", "zipnnfs"};
  app.set_version_flag("--version", "zipnnfs " ZIPNN_VERSION);
  app.require_subcommand(1);

  std::string store_dir;
  CLI::App* init = app.add_subcommand("init", "Create an empty store in STORE");
  init->add_option("STORE", store_dir, "Store directory (new or empty)")->required();

  std::vector<std::string> sources;
  std::string to = "/";
  unsigned threads = 0;
  bool quiet = false;
  CLI::App* import = app.add_subcommand(
      "import",
      "Copy SRC... into the store like cp -a SRC... PATH/ (trees, modes, times, symlinks)");
  import->add_option("STORE", store_dir, "Store directory")->required();
  import->add_option("SRC", sources, "Files or directories to import")->required();
  import->add_option("--to", to, "Store directory to import into (created if missing)")
      ->capture_default_str();
  import->add_option("--threads", threads, "Compression threads (0: all cores)")
      ->check(CLI::Range(0u, 1024u))
      ->capture_default_str();
  import->add_flag("-q,--quiet", quiet, "No progress line or summary");

  std::string dest, path;
  CLI::App* exp = app.add_subcommand(
      "export", "Copy the store's root (or PATH) to DEST like cp -a, byte-exact");
  exp->add_option("STORE", store_dir, "Store directory")->required();
  exp->add_option("DEST", dest, "Destination on the host")->required();
  exp->add_option("PATH", path, "Store path to export (default: the root)");

  uint64_t offset = 0, length = 0;
  CLI::App* cat = app.add_subcommand("cat", "Write bytes of store file PATH to stdout");
  cat->add_option("STORE", store_dir, "Store directory")->required();
  cat->add_option("PATH", path, "Store path of a file")->required();
  cat->add_option("--offset", offset, "First byte")->transform(kByteCount)->capture_default_str();
  CLI::Option* length_opt =
      cat->add_option("--length", length, "Bytes (default: to the end)")->transform(kByteCount);

  std::vector<std::string> stat_paths;
  bool json = false;
  CLI::App* stats = app.add_subcommand(
      "stats",
      "Per file size, stored size, ratio and dtypes; totals and dedup savings. Given a mount "
      "point instead of a store: its daemon's live figures (JSON)");
  stats->add_option("STORE", store_dir, "Store directory, or a mount point")->required();
  stats->add_option("PATH", stat_paths, "Store paths (default: everything)");
  stats->add_flag("--json", json, "Machine-readable output");

  bool quick = false, repair = false;
  CLI::App* fsck = app.add_subcommand(
      "fsck", "Check the index and every frame's checksum; exit 0 when clean, 1 when damaged");
  fsck->add_option("STORE", store_dir, "Store directory")->required();
  fsck->add_flag("--quick", quick, "Check the index only, not the frames");
  fsck->add_flag("--repair", repair,
                 "Make the store consistent: remove damaged files (listed; re-import them), drop "
                 "bad chunk records and dangling entries, fix refcounts");

  CLI::App* gc = app.add_subcommand(
      "gc", "Reclaim unreferenced chunks and rewrite packs less than half full, crash-safely");
  gc->add_option("STORE", store_dir, "Store directory")->required();

  tool::BenchImportOptions bench_opts;
  bench_opts.default_corpus = ZIPNN_SOURCE_DIR "/../shared/corpus";
  CLI::App* bench = app.add_subcommand(
      "bench-import", "Import speed against the codec's all-thread compress speed, same files");
  bench->add_option("SRC", bench_opts.sources, "Files or directories (default: the corpus)");
  bench->add_option("--threads", bench_opts.threads, "Threads (0: all cores)")
      ->check(CLI::Range(0u, 1024u))
      ->capture_default_str();
  bench->add_option("--rounds", bench_opts.rounds, "Rounds")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  bench->add_option("--scratch", bench_opts.scratch, "Directory for the temporary stores")
      ->capture_default_str();
  bench->add_option(
      "--synthetic-mb", bench_opts.synthetic_mb,
      "Instead of SRC: generated BF16 models of 200 MB each, this many MB rounded up");

  // Anything else with a store and a mount point: the sshfs form, `zipnnfs STORE MOUNTPOINT`,
  // options anywhere (`zipnnfs -f -o cache_size=2G STORE MOUNTPOINT`, as sshfs takes them).
  // (Set after the subcommands, which would otherwise each repeat it in their --help.)
  app.footer(zipnn::fs::MountUsage());
  const auto is_subcommand = [&](const CLI::App* sub) { return sub->get_name() == argv[1]; };
  const std::string_view first = argc >= 2 ? argv[1] : "";
  const bool help = first == "-h" || first == "--help" || first == "--version";
  if (argc >= 3 && !help && std::as_const(app).get_subcommands(is_subcommand).empty()) {
    return zipnn::fs::MountMain(argc, argv);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }

  if (*init) return Init(store_dir);
  if (*import) return Import(store_dir, sources, to, threads, quiet);
  if (*exp) return Export(store_dir, dest, path);
  if (*cat) {
    return Cat(store_dir, path, offset,
               *length_opt ? std::optional<uint64_t>(length) : std::nullopt);
  }
  // (Their reports are the output: one that cannot be written is a failure, not a silent 0.)
  auto written = [](int rc) {
    if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return rc;
    return Fail(Status::FromErrno(errno != 0 ? errno : EIO, "writing the report"));
  };
  if (*stats) return written(Stats(store_dir, stat_paths, json));
  if (*fsck) return written(Fsck(store_dir, quick, repair));
  if (*gc) return Gc(store_dir);
  if (*bench) {
    Status st = tool::BenchImport(bench_opts);
    return st.ok() ? 0 : Fail(st);
  }
  return kExitUsage;
}
