// zipnn: compress model weights into .znn containers and back, inspect them, benchmark the codec.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <new>
#include <string>

#include "codec/codec.h"
#include "tools/commands.h"
#include "tools/file_io.h"
#include "tools/synth_model.h"

#ifndef ZIPNN_VERSION
#define ZIPNN_VERSION "dev"
#endif

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

// A CLI11 option whose value is a byte size such as 256K or 1M.
CLI::Validator SizeValidator() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        return zipnn::ParseSize(s) ? "" : "not a size (e.g. 262144, 256K, 1M): " + s;
      },
      "SIZE");
}

}  // namespace

int main(int argc, char** argv) {
  zipnn::tool::HoldStandardDescriptors();
  using namespace zipnn::tool;
  CLI::App app{"zipnn: lossless compression of AI model weights (.znn files)", "zipnn"};
  app.set_version_flag("--version", "zipnn " ZIPNN_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);

  CompressOptions copts;
  std::string chunk_size = "256K";
  CLI::App* compress = app.add_subcommand("compress", "Compress FILE into FILE.znn");
  compress->add_option("FILE", copts.input, "File to compress")->required();
  compress->add_option("-o,--output", copts.output,
                       "Output file (default: FILE.znn; - for stdout)");
  compress->add_flag("-f,--force", copts.force, "Replace an existing output file");
  compress->add_flag("-q,--quiet", copts.quiet, "Print no summary");
  compress->add_option("--threads", copts.threads, "Threads (0: all cores)")
      ->check(CLI::Range(0u, 1024u))
      ->capture_default_str();
  compress->add_option("--chunk-size", chunk_size, "Chunk size, e.g. 256K, 1M (at most 64M)")
      ->check(SizeValidator())
      ->capture_default_str();
  compress->add_option("--level", copts.level, "zstd level for zstd-coded streams (1-19)")
      ->check(CLI::Range(1, 19))
      ->capture_default_str();

  DecompressOptions dopts;
  CLI::App* decompress = app.add_subcommand("decompress", "Restore the original of FILE.znn");
  decompress->add_option("FILE", dopts.input, "A .znn file")->required();
  decompress->add_option("-o,--output", dopts.output,
                         "Output file (default: FILE without .znn; - for stdout)");
  decompress->add_flag("-f,--force", dopts.force, "Replace an existing output file");
  decompress->add_flag("-q,--quiet", dopts.quiet, "Print no summary");
  decompress->add_option("--threads", dopts.threads, "Threads (0: all cores)")
      ->check(CLI::Range(0u, 1024u))
      ->capture_default_str();

  CatOptions catopts;
  std::string cat_offset = "0", cat_length;
  CLI::App* cat = app.add_subcommand(
      "cat", "Write original bytes of FILE.znn to stdout, decoding only the frames needed");
  cat->add_option("FILE", catopts.input, "A .znn file")->required();
  cat->add_option("--offset", cat_offset, "First byte (suffixes K, M, G allowed)")
      ->check(SizeValidator())
      ->capture_default_str();
  cat->add_option("--length", cat_length, "Number of bytes (default: to the end)")
      ->check(SizeValidator());

  std::string info_input;
  CLI::App* info = app.add_subcommand("info", "Show what FILE.znn holds, per method and dtype");
  info->add_option("FILE", info_input, "A .znn file")->required();

  BenchOptions bopts;
  CLI::App* bench = app.add_subcommand(
      "bench",
      "Compare ratio and speed with zstd per dtype, on FILES or the real-weights corpus "
      "($ZIPNN_CORPUS, else ../shared/corpus; a synthetic model if there is none)");
  bench->add_option("FILES", bopts.files, "Files to benchmark");
  bench->add_option("--threads", bopts.threads, "Threads of the multi-threaded run (0: all)")
      ->check(CLI::Range(0u, 1024u))
      ->capture_default_str();
  bench->add_option("--min-time", bopts.min_seconds, "Seconds each measurement runs at least")
      ->check(CLI::Range(0.0, 60.0))
      ->capture_default_str();

  SynthModelOptions sopts;
  std::string synth_output, synth_dtype = "bf16";
  bool synth_force = false;
  CLI::App* synth = app.add_subcommand(
      "synth", "Write a synthetic transformer-like .safetensors model (for demos and tests)");
  synth->add_option("FILE", synth_output, "Output file")->required();
  synth->add_flag("-f,--force", synth_force, "Replace an existing output file");
  synth->add_option("--dtype", synth_dtype, "bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  synth->add_option("--layers", sopts.layers, "Layers")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  synth->add_option("--dim", sopts.dim, "Hidden size")
      ->check(CLI::Range(8, 65536))
      ->capture_default_str();
  synth->add_option("--seed", sopts.seed, "Random seed")->capture_default_str();

  // (CLI11 would take a mistyped command for a stray argument: "A subcommand is required".)
  const auto known = [&app](const char* name) {
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
      if (sub->check_name(name)) return true;
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !known(argv[1])) {
    std::fprintf(stderr, "zipnn: unknown command: %s (see zipnn --help)\n", argv[1]);
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help, version or the error
    return rc == 0 ? 0 : kExitUsage;
  }

  zipnn::Status status;
  // "-o -" is stdout, as for curl and tar (not a file named "-").
  for (std::string* out : {&copts.output, &dopts.output, &synth_output})
    if (*out == "-") *out = "/dev/stdout";
  if (app.got_subcommand(compress)) {
    copts.chunk_size = static_cast<uint32_t>(
        std::min<uint64_t>(*zipnn::ParseSize(chunk_size), uint64_t{zipnn::kMaxChunkSize} + 1));
    // (All of the codec's rule: a size it refuses later would exit 1, as if the input were bad.)
    if (copts.chunk_size < 4096 || copts.chunk_size > zipnn::kMaxChunkSize ||
        copts.chunk_size % 8 != 0) {
      std::fprintf(stderr, "zipnn: --chunk-size must be a multiple of 8 between 4K and 64M\n");
      return kExitUsage;
    }
    status = Compress(copts);
  } else if (app.got_subcommand(decompress)) {
    status = Decompress(dopts);
  } else if (app.got_subcommand(cat)) {
    catopts.offset = *zipnn::ParseSize(cat_offset);
    if (!cat_length.empty()) catopts.length = *zipnn::ParseSize(cat_length);
    status = Cat(catopts);
  } else if (app.got_subcommand(info)) {
    status = Info(info_input);
  } else if (app.got_subcommand(bench)) {
    status = Bench(bopts);
  } else if (app.got_subcommand(synth)) {
    sopts.dtype = synth_dtype == "f32" ? zipnn::DType::kF32 : zipnn::DType::kBF16;
    sopts.overwrite = synth_force;  // as compress and decompress: an existing file needs -f
    try {  // the model is built in memory: --layers 4096 --dim 65536 asks for 200 TB
      status = WriteSyntheticSafetensors(synth_output, sopts);
    } catch (const std::bad_alloc&) {
      status = zipnn::Status::InvalidArgument(synth_output + ": model too large for memory");
    }
  }
  if (!status.ok()) {
    std::fprintf(stderr, "zipnn: %s\n", status.message().c_str());
    return kExitError;
  }
  return 0;
}
