// flashlab: run experiment suites of attention variants and record time, memory, HBM traffic and error.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/suite.hpp"

namespace {

std::string command_line(int argc, char** argv) {
  std::string text;
  for (int i = 0; i < argc; ++i) {
    if (i) text += ' ';
    const std::string arg = argv[i];
    const bool plain = arg.find_first_of(" \t'\"$\\") == std::string::npos && !arg.empty();
    text += plain ? arg : "'" + arg + "'";
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace flashlab::harness;
  CLI::App app{"flashlab: sweep attention variants over suites of problems; measure time, memory, HBM traffic "
               "and error against the fp64 reference; write results.csv and run.json.\n"
               "Exit codes: 0 all rows ran (ok, oom or unsupported); 1 some rows are errors or failed verification; "
               "2 bad usage or malformed suite (nothing ran); 3 results could not be written."};
  app.require_subcommand(1);
  CLI::App* list = app.add_subcommand(
      "list", "list the variants (the registry), what each supports, and the CUDA device found");
  bool list_kernels = false;
  list->add_flag("--kernels", list_kernels,
                 "also each GPU variant's compiled kernels on the device: registers, local memory (spills), shared "
                 "memory");

  RunOptions options;
  CLI::App* run = app.add_subcommand("run", "run a suite file (see experiments/README.md)");
  run->add_option("suite", options.suite, "suite file (TOML)")->required()->check(CLI::ExistingFile);
  run->add_option("--out", options.out, "results root; the run goes to OUT/<suite>/<run-id>/")->capture_default_str();
  run->add_option("--run-id", options.run_id, "name of the run directory (default: UTC time)");
  run->add_flag("--resume", options.resume,
                "continue a run (--run-id, else the latest of the suite): rows already in results.csv are skipped");
  run->add_option("--shard", options.shard, "i/n: run rows whose index % n == i (shards' CSVs concatenate)");
  run->add_option("--filter", options.filter, "key=value[,key=value...]: run matching rows only");
  run->add_flag("--dry-run", options.dry_run, "print the expanded rows and what would run; run nothing");
  std::int64_t save_row = -1;
  run->add_option("--save-tensors", save_row, "row index whose inputs and outputs are written as .npy");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  try {
    if (app.got_subcommand("list")) return list_variants(list_kernels);
    options.command_line = command_line(argc, argv);
    options.progress = isatty(fileno(stderr)) != 0;
    if (save_row >= 0) options.save_tensors = save_row;
    return run_suite(options);
  } catch (const SuiteError& e) {
    std::fprintf(stderr, "flashlab: %s\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashlab: %s\n", e.what());
    return kExitOutput;
  }
}
