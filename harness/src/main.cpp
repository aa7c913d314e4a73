// flashlab: run experiment suites of attention variants and record time, memory, HBM traffic and error.
#include <malloc.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "flashlab/harness/check.hpp"
#include "flashlab/harness/compare.hpp"
#include "flashlab/harness/devices.hpp"
#include "flashlab/core/parallel.hpp"
#include "flashlab/harness/run_info.hpp"
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
  // The verification allocates and frees matrices of tens of MiB per block of rows, on every worker. glibc serves
  // such blocks with fresh mmap pages (zeroed by the kernel, one page fault each, under the process's mm lock);
  // keeping them in the heap lets the next block reuse them.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"flashlab: sweep attention variants over suites of problems; measure time, memory, HBM traffic "
               "and error against the fp64 reference; write results.csv and run.json.\n"
               "Exit codes: 0 all rows ran (ok, oom or unsupported); 1 some rows are errors or failed verification; "
               "2 bad usage or malformed suite (nothing ran); 3 results could not be written.\n"
               "check: 0 no regression, 1 a regression, 2 bad usage or malformed input. compare: 0, 1 with "
               "--fail-on slower when a row is slower past the threshold, 2 bad usage or unreadable runs."};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] { return std::string("flashlab ") + FLASHLAB_VERSION + " (commit " + git_commit() + ")"; });
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
  std::string save_rows;
  run->add_option("--save-tensors", save_rows,
                  "rows (3, 0,5,7, 10-12) whose inputs and outputs are written as .npy under tensors/row-N/, with the "
                  "fp64 reference outputs (o_ref, ...) and a varlen row's cu_seqlens");
  std::string devices;
  run->add_option("--devices", devices,
                  "0,1,...: one process per GPU (CUDA_VISIBLE_DEVICES), each a shard i/n of the rows, merged in row "
                  "order into the run's folder");
  std::uint64_t seed = 0;
  CLI::Option* seed_option = run->add_option("--seed", seed, "input seed, in place of the suite's [suite] seed");

  CLI::App* check = app.add_subcommand(
      "check", "numerics regression check: compare a run's errors (and, for deterministic rows, its output hashes) "
               "with a baseline recorded by `check record`; exit 1 on a regression");
  std::string check_dir, baseline, report;
  check->add_option("run", check_dir, "run directory (holding results.csv and run.json)");
  check->add_option("--baseline", baseline, "baseline CSV written by `flashlab check record`");
  check->add_option("--report", report, "also write the result as markdown to this file");
  check->require_subcommand(0, 1);
  CLI::App* record = check->add_subcommand(
      "record", "write a baseline from runs of one suite with different seeds (flashlab run --seed S)");
  std::vector<std::string> record_dirs;
  std::string record_out;
  bool repeat = false;
  record->add_option("runs", record_dirs, "run directories, at least 3 seeds")->required();
  record->add_option("--out", record_out, "baseline CSV to write")->required();
  record->add_flag("--repeat", repeat,
                   "accept a seed given twice: a (row, tensor) whose runs of that seed have equal hashes is marked "
                   "bitwise (its hash is then enforced)");

  CompareOptions compare_options;
  CLI::App* compare = app.add_subcommand(
      "compare", "compare two runs row by row on their keys: time ratio B / A with a noise-aware verdict (faster, "
                 "slower, same, unclear; from each row's p20-p80 range), error ratio per tensor, a summary");
  std::string fail_on;
  compare->add_option("a", compare_options.a, "run directory A (the reference: a committed run, the code before)")
      ->required();
  compare->add_option("b", compare_options.b, "run directory B (the one judged)")->required();
  compare->add_option("--markdown", compare_options.markdown, "also write the summary and the table to this file");
  compare->add_option("--csv", compare_options.csv, "also write the table as CSV (reports draw it: python3 -m "
                                                    "reports.compare CSV)");
  compare->add_option("--fail-on", fail_on, "slower: exit 1 when a row is slower past --threshold")
      ->check(CLI::IsMember({"slower"}));
  compare->add_option("--threshold", compare_options.threshold, "time ratio B / A past which a slower row fails")
      ->capture_default_str();
  compare->add_option("--same", compare_options.same, "relative difference of the medians within which a row is the same")
      ->capture_default_str();

  CLI::App* merge = app.add_subcommand(
      "merge", "merge the shard folders RUN_DIR-shard-i-N of one run (flashlab run --run-id ID --shard i/N, e.g. a "
               "SLURM array) into RUN_DIR, rows in row order");
  std::string merge_dir;
  std::size_t merge_shard_count = 0;
  merge->add_option("run_dir", merge_dir, "OUT/<suite>/<run-id>: the shards are its siblings <run-id>-shard-i-N")
      ->required();
  merge->add_option("--shards", merge_shard_count, "N, the shard count")->required()->check(CLI::PositiveNumber);

  // A first word that is no subcommand is named as such (CLI11 would say "A subcommand is required").
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      known = known || sub->get_name() == argv[1];
    }
    if (!known) {
      std::fprintf(stderr, "flashlab: unknown subcommand '%s' (subcommands: %s; flashlab --help)\n", argv[1],
                   names.c_str());
      return kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // one line, with the program's prefix, instead of CLI11's message and its "Run with --help" line
    std::fprintf(stderr, "flashlab: %s (flashlab --help)\n", e.what());
    return kExitUsage;
  }
  if (const std::string problem = flashlab::worker_count_problem(); !problem.empty()) {
    std::fprintf(stderr, "flashlab: %s\n", problem.c_str());
    return kExitUsage;
  }
  try {
    if (app.got_subcommand("list")) return list_variants(list_kernels);
    if (app.got_subcommand("merge")) {
      std::size_t rows = 0;
      try {
        rows = merge_shards(merge_dir, merge_shard_count, {}, true);
      } catch (const std::runtime_error& e) {
        std::fprintf(stderr, "flashlab merge: %s\n", e.what());
        return kExitUsage;
      }
      std::printf("merged %zu rows of %zu shards into %s/results.csv\n", rows, merge_shard_count, merge_dir.c_str());
      return 0;
    }
    if (app.got_subcommand("compare")) {
      compare_options.fail_on_slower = fail_on == "slower";
      return compare_command(compare_options);
    }
    if (app.got_subcommand("check")) {
      if (record->parsed()) {
        return record_baseline(std::vector<std::filesystem::path>(record_dirs.begin(), record_dirs.end()), record_out,
                               repeat);
      }
      if (check_dir.empty() || baseline.empty()) {
        std::fprintf(stderr, "flashlab check: give RUN_DIR and --baseline FILE (or: check record RUN_DIR... --out FILE)\n");
        return kExitUsage;
      }
      return check_run(check_dir, baseline, report);
    }
    options.command_line = command_line(argc, argv);
    options.progress = true;
    options.progress_terminal = isatty(fileno(stderr)) != 0;
    if (!save_rows.empty()) {
      try {
        options.save_tensors = parse_row_list(save_rows);
      } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "flashlab: --save-tensors: %s\n", e.what());
        return kExitUsage;
      }
    }
    if (seed_option->count() > 0) options.seed = seed;
    if (!devices.empty()) {
      std::vector<std::string> list;
      try {
        list = parse_devices(devices);
      } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "flashlab: --devices %s\n", e.what());
        return kExitUsage;
      }
      std::error_code ec;
      const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
      return run_on_devices(options, list, ec ? std::string(argv[0]) : self.string());
    }
    return run_suite(options);
  } catch (const CheckError& e) {
    std::fprintf(stderr, "flashlab: %s\n", e.what());
    return kExitUsage;
  } catch (const SuiteError& e) {
    std::fprintf(stderr, "flashlab: %s\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashlab: %s\n", e.what());
    return kExitOutput;
  }
}
