// `flashlab check record` and `flashlab check` (check.hpp; the format and the band in harness/README.md).
#include "flashlab/harness/check.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/verify.hpp"

namespace flashlab::harness {

const std::vector<std::string>& identity_columns() {
  static const std::vector<std::string> columns = {
      "variant",  "pass",     "dtype",      "distribution", "batch",       "heads",        "heads_kv",      "seqlen_q",
      "seqlen_k", "head_dim", "head_dim_v", "causal",       "window_left", "window_right", "softmax_scale", "varlen"};
  return columns;
}

const std::string& field(const ResultRow& row, const std::string& column) {
  static const std::string empty;
  const auto it = row.find(column);
  return it == row.end() ? empty : it->second;
}

std::optional<double> parse_number(const std::string& text) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || stop != end) return std::nullopt;
  return value;
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return parts;
    start = at + 1;
  }
}

namespace {

std::string number(double x) {
  return fmt::format("{}", x);
}
std::string shown(double x) {
  return fmt::format("{:.4g}", x);
}

// One value of a run's row that must be a number (its verification columns).
double run_number(const RunTable& run, const ResultRow& row, const std::string& column) {
  const std::string& text = field(row, column);
  const std::optional<double> value = parse_number(text);
  if (!value) {
    throw CheckError(fmt::format("{}: row {}: column '{}': '{}' is not a number", run.csv.string(),
                                 field(row, "row_index"), column, text));
  }
  return *value;
}

// Whether `value` lies outside the band of a log-normal spread, on either side (the bound's drift test).
bool outside_spread(double value, double log_mean, double log_std, int seeds) {
  if (!(value > 0)) return true;
  const double half = std::max(kBandSigmas * log_std * std::sqrt(1 + 1.0 / seeds), std::log1p(kBandMargin));
  return std::abs(std::log(value) - log_mean) > half;
}

}  // namespace

double Band::stored() const {
  return log_mean ? std::exp(*log_mean) : 0.0;
}

Band error_band(const std::vector<double>& values, double floor, double least_factor) {
  Band band;
  band.seeds = static_cast<int>(values.size());
  std::vector<double> logs;
  for (const double v : values) {
    if (v > 0) {
      logs.push_back(std::log(v));
    } else {
      ++band.zeros;
    }
  }
  if (!values.empty()) {
    band.min = *std::min_element(values.begin(), values.end());
    band.max = *std::max_element(values.begin(), values.end());
  }
  if (logs.empty()) {  // exactly 0 in every seed: it must stay within the rounding floor
    band.hi = floor;
    return band;
  }
  const double s = static_cast<double>(logs.size());
  double mean = 0;
  for (const double l : logs) mean += l / s;
  double squares = 0;
  for (const double l : logs) squares += (l - mean) * (l - mean);
  band.log_mean = mean;
  band.log_std = logs.size() > 1 ? std::sqrt(squares / (s - 1)) : 0.0;
  const double sigma_eff = band.log_std * std::sqrt(1 + 1 / s);  // a new draw's spread about an estimated mean
  band.hi =
      std::max(std::exp(mean + std::max(kBandSigmas * sigma_eff, std::log1p(kBandMargin))), least_factor * band.max);
  return band;
}

std::string RunTable::platform(const ResultRow& row) const {
  const std::string& device = field(row, "device");
  if (device == "cpu") return threads > 0 ? fmt::format("cpu threads={}", threads) : "cpu";
  if (device == "cuda") return "cuda " + (device_name.empty() ? std::string("unknown") : device_name);
  return device;
}

RunTable load_run(const std::filesystem::path& dir) {
  RunTable run;
  run.dir = dir;
  run.csv = dir / "results.csv";
  if (!std::filesystem::is_directory(dir)) throw CheckError(fmt::format("{}: no such run directory", dir.string()));
  if (!std::filesystem::exists(run.csv)) {
    throw CheckError(fmt::format("{}: no results.csv (not a flashlab run directory)", dir.string()));
  }
  try {
    run.rows = read_results(run.csv);
  } catch (const std::exception& e) {
    throw CheckError(e.what());
  }
  if (run.rows.empty()) throw CheckError(fmt::format("{}: no rows", run.csv.string()));
  std::vector<std::string> required = {"key", "suite", "row_index", "seed", "status", "reason", "device"};
  required.insert(required.end(), identity_columns().begin(), identity_columns().end());
  for (const std::string& column : required) {
    if (!run.rows.front().count(column)) {
      throw CheckError(fmt::format("{}: missing column '{}'", run.csv.string(), column));
    }
  }
  run.suite = field(run.rows.front(), "suite");
  run.seed = field(run.rows.front(), "seed");
  std::set<std::string> keys;
  for (const ResultRow& row : run.rows) {
    if (field(row, "suite") != run.suite) {
      throw CheckError(
          fmt::format("{}: rows of two suites ('{}' and '{}')", run.csv.string(), run.suite, field(row, "suite")));
    }
    if (field(row, "seed") != run.seed) {
      throw CheckError(fmt::format("{}: rows of two seeds ({} and {}): a run for the check has one seed",
                                   run.csv.string(), run.seed, field(row, "seed")));
    }
    if (!keys.insert(field(row, "key")).second) {
      throw CheckError(fmt::format("{}: row key '{}' appears twice", run.csv.string(), field(row, "key")));
    }
  }
  std::ifstream in(dir / "run.json");
  if (in) {
    const nlohmann::json info = nlohmann::json::parse(in, nullptr, false);
    if (info.is_object()) {
      const auto device = info.find("device");
      if (device != info.end() && device->is_object() && device->contains("name") && (*device)["name"].is_string()) {
        run.device_name = (*device)["name"].get<std::string>();
      }
      const auto host = info.find("host");
      if (host != info.end() && host->is_object() && host->contains("threads") &&
          (*host)["threads"].is_number_integer()) {
        run.threads = (*host)["threads"].get<int>();
      }
    }
  }
  return run;
}

const std::string* BaselineEntry::hash_of(const std::string& seed) const {
  for (const auto& [s, hash] : hashes) {
    if (s == seed) return &hash;
  }
  return nullptr;
}

std::vector<BaselineEntry> make_baseline(const std::vector<RunTable>& runs, bool repeat, RecordSummary* summary_out) {
  RecordSummary summary;
  if (runs.size() < 3) {
    throw CheckError(fmt::format("check record: {} run{} given; a baseline needs runs of at least 3 seeds", runs.size(),
                                 runs.size() == 1 ? "" : "s"));
  }
  const RunTable& first = runs.front();
  for (const RunTable& run : runs) {
    if (run.suite != first.suite) {
      throw CheckError(fmt::format("check record: runs of different suites: '{}' ({}) and '{}' ({})", first.suite,
                                   first.dir.string(), run.suite, run.dir.string()));
    }
    if (run.device_name != first.device_name || run.threads != first.threads) {
      throw CheckError(fmt::format(
          "check record: runs on different machines: {} (GPU '{}', {} CPU threads) and {} (GPU '{}', {} CPU threads): "
          "a "
          "baseline is per device",
          first.dir.string(), first.device_name, first.threads, run.dir.string(), run.device_name, run.threads));
    }
  }
  // The first run of each seed makes the statistics; a later run of the same seed (--repeat) only tests the bits.
  std::vector<const RunTable*> primary, repeated;
  std::map<std::string, std::size_t> primary_of_seed;
  std::set<std::filesystem::path> dirs;
  for (const RunTable& run : runs) {
    if (!dirs.insert(std::filesystem::weakly_canonical(run.dir)).second) {
      throw CheckError(fmt::format("check record: {} is given twice", run.dir.string()));
    }
    const auto seen = primary_of_seed.find(run.seed);
    if (seen == primary_of_seed.end()) {
      primary_of_seed[run.seed] = primary.size();
      primary.push_back(&run);
      summary.seeds.push_back(run.seed);
      continue;
    }
    if (!repeat) {
      throw CheckError(fmt::format(
          "check record: {} and {} share seed {} (a seed twice only with --repeat, to test bitwise repeatability)",
          primary[seen->second]->dir.string(), run.dir.string(), run.seed));
    }
    repeated.push_back(&run);
  }
  summary.repeats = repeated.size();
  if (primary.size() < 3) {
    throw CheckError(
        fmt::format("check record: runs of {} distinct seeds; a baseline needs at least 3", primary.size()));
  }
  if (repeat && repeated.empty()) throw CheckError("check record --repeat: no seed is given twice");

  std::vector<std::map<std::string, const ResultRow*>> by_key(runs.size());
  for (std::size_t i = 0; i < runs.size(); ++i) {
    for (const ResultRow& row : runs[i].rows) by_key[i][field(row, "key")] = &row;
  }
  auto row_of = [&](const RunTable* run, const std::string& key) -> const ResultRow* {
    const std::size_t i = static_cast<std::size_t>(run - runs.data());
    const auto it = by_key[i].find(key);
    return it == by_key[i].end() ? nullptr : it->second;
  };
  std::set<std::string> elsewhere;  // keys of later runs that the first lacks
  for (std::size_t i = 1; i < runs.size(); ++i) {
    for (const auto& [key, row] : by_key[i]) {
      if (!by_key[0].count(key)) elsewhere.insert(key);
    }
  }
  summary.not_everywhere = elsewhere.size();

  std::vector<BaselineEntry> entries;
  for (const ResultRow& row : first.rows) {
    const std::string& key = field(row, "key");
    bool everywhere = true, ok = true;
    for (const RunTable& run : runs) {
      const ResultRow* r = row_of(&run, key);
      everywhere = everywhere && r != nullptr;
      ok = ok && r != nullptr && field(*r, "status") == "ok";
    }
    if (!everywhere) {
      ++summary.not_everywhere;
      continue;
    }
    if (!ok) {
      ++summary.not_ok;
      continue;
    }
    bool any = false;
    for (const char* t : kOutputTensors) {
      const std::string tensor = t;
      const std::string prefix = "err_" + tensor + "_";
      bool verified = true;
      for (const RunTable* run : primary) {
        for (const char* metric : kBandMetrics)
          verified = verified && !field(*row_of(run, key), prefix + metric).empty();
      }
      if (!verified) continue;
      BaselineEntry entry;
      entry.suite = first.suite;
      entry.key = key;
      entry.platform = first.platform(row);
      entry.tensor = tensor;
      for (const std::string& column : identity_columns()) entry.identity[column] = field(row, column);
      entry.seeds = static_cast<int>(primary.size());
      entry.scaled = true;  // in units of the bound where every seed has a finite positive one
      for (const RunTable* run : primary) {
        const ResultRow& r = *row_of(run, key);
        if (!field(r, prefix + "floor").empty())
          entry.floor = std::max(entry.floor, run_number(*run, r, prefix + "floor"));
        entry.hashes.emplace_back(run->seed, field(r, "hash_" + tensor));
        const std::optional<double> bound = parse_number(field(r, prefix + "bound"));
        entry.scaled = entry.scaled && bound && std::isfinite(*bound) && *bound > 0;
      }
      bool all_zero = true;
      for (const char* metric : kBandMetrics) {
        for (const RunTable* run : primary)
          all_zero = all_zero && run_number(*run, *row_of(run, key), prefix + metric) == 0;
      }
      entry.scaled = entry.scaled && !all_zero;  // an exact tensor keeps its band in absolute units: the floor
      if (entry.scaled) {
        std::vector<double> bounds;
        for (const RunTable* run : primary) bounds.push_back(run_number(*run, *row_of(run, key), prefix + "bound"));
        const Band spread = error_band(bounds, 0);
        entry.bound_log_mean = spread.log_mean;
        entry.bound_log_std = spread.log_std;
      }
      for (const char* metric : kBandMetrics) {
        std::vector<double> values;
        for (const RunTable* run : primary) {
          const ResultRow& r = *row_of(run, key);
          const double value = run_number(*run, r, prefix + metric);
          values.push_back(entry.scaled ? value / run_number(*run, r, prefix + "bound") : value);
        }
        entry.bands[metric] = error_band(values, entry.floor, std::string(metric) == "max_abs" ? kMaxAbsSlack : 1.0);
      }
      if (!repeated.empty()) {
        bool same = true;
        for (const RunTable* run : repeated) {
          const std::string& again = field(*row_of(run, key), "hash_" + tensor);
          same = same && !again.empty() && again == *entry.hash_of(run->seed);
        }
        entry.bitwise = same;
        ++summary.bitwise_tested;
        if (same) ++summary.bitwise;
      }
      entries.push_back(std::move(entry));
      any = true;
    }
    if (any) ++summary.rows;
  }
  if (entries.empty()) {
    throw CheckError(fmt::format("check record: no row of suite '{}' is ok and verified in every run", first.suite));
  }
  if (summary_out) *summary_out = summary;
  return entries;
}

const std::vector<std::string>& baseline_columns() {
  static const std::vector<std::string> columns = [] {
    std::vector<std::string> c = {"suite", "key", "platform"};
    c.insert(c.end(), identity_columns().begin(), identity_columns().end());
    c.insert(c.end(), {"tensor", "seeds", "floor", "scale", "bound_log_mean", "bound_log_std"});
    for (const char* metric : kBandMetrics) {
      for (const char* stat : {"log_mean", "log_std", "min", "max", "band_hi"}) {
        c.push_back(std::string(metric) + "_" + stat);
      }
    }
    c.insert(c.end(), {"bitwise", "hashes"});
    return c;
  }();
  return columns;
}

void write_baseline(const std::filesystem::path& file, const std::vector<BaselineEntry>& entries) {
  std::string text;
  auto line = [&](const std::vector<std::string>& fields) {
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (i > 0) text += ',';
      text += csv_escape(fields[i]);
    }
    text += '\n';
  };
  line(baseline_columns());
  for (const BaselineEntry& e : entries) {
    std::vector<std::string> fields = {e.suite, e.key, e.platform};
    for (const std::string& column : identity_columns()) fields.push_back(field(e.identity, column));
    fields.insert(fields.end(),
                  {e.tensor, std::to_string(e.seeds), number(e.floor), e.scaled ? "bound" : "1",
                   e.bound_log_mean ? number(*e.bound_log_mean) : "", e.bound_log_mean ? number(e.bound_log_std) : ""});
    for (const char* metric : kBandMetrics) {
      const Band& b = e.bands.at(metric);
      fields.insert(fields.end(), {b.log_mean ? number(*b.log_mean) : "", b.log_mean ? number(b.log_std) : "",
                                   number(b.min), number(b.max), number(b.hi)});
    }
    fields.push_back(e.bitwise ? (*e.bitwise ? "1" : "0") : "");
    std::string hashes;
    for (const auto& [seed, hash] : e.hashes) {
      if (!hashes.empty()) hashes += ';';
      hashes += seed + ":" + hash;
    }
    fields.push_back(hashes);
    line(fields);
  }
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  const std::filesystem::path temporary = file.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error(fmt::format("{}: cannot write", temporary.string()));
  }
  std::filesystem::rename(temporary, file);
}

std::vector<BaselineEntry> read_baseline(const std::filesystem::path& file) {
  if (!std::filesystem::is_regular_file(file))
    throw CheckError(fmt::format("{}: no such baseline file", file.string()));
  std::vector<ResultRow> rows;
  try {
    rows = read_results(file);
  } catch (const std::exception& e) {
    throw CheckError(e.what());
  }
  if (rows.empty()) throw CheckError(fmt::format("{}: no baseline lines", file.string()));
  for (const std::string& column : baseline_columns()) {
    if (!rows.front().count(column)) throw CheckError(fmt::format("{}: missing column '{}'", file.string(), column));
  }
  std::vector<BaselineEntry> entries;
  std::set<std::pair<std::string, std::string>> seen;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const ResultRow& row = rows[i];
    const std::size_t line = i + 2;  // after the header; baseline fields hold no line breaks
    auto fail = [&](const std::string& problem) {
      return CheckError(fmt::format("{}:{}: {}", file.string(), line, problem));
    };
    auto value = [&](const std::string& column, bool may_be_empty = false) -> std::optional<double> {
      const std::string& text = field(row, column);
      if (may_be_empty && text.empty()) return std::nullopt;
      const std::optional<double> v = parse_number(text);
      if (!v) throw fail(fmt::format("column '{}': '{}' is not a number", column, text));
      return v;
    };
    BaselineEntry e;
    e.suite = field(row, "suite");
    e.key = field(row, "key");
    e.platform = field(row, "platform");
    e.tensor = field(row, "tensor");
    if (e.key.empty()) throw fail("empty key");
    if (std::find_if(std::begin(kOutputTensors), std::end(kOutputTensors),
                     [&](const char* t) { return e.tensor == t; }) == std::end(kOutputTensors)) {
      throw fail(fmt::format("column 'tensor': '{}' is not one of o, lse, dq, dk, dv", e.tensor));
    }
    if (e.suite != field(rows.front(), "suite")) {
      throw fail(fmt::format("suite '{}', the first line's is '{}'", e.suite, field(rows.front(), "suite")));
    }
    if (!seen.insert({e.key, e.tensor}).second)
      throw fail(fmt::format("(key, tensor) repeated: {} {}", e.key, e.tensor));
    for (const std::string& column : identity_columns()) e.identity[column] = field(row, column);
    const double seeds = *value("seeds");
    if (seeds < 1 || seeds != std::floor(seeds)) throw fail(fmt::format("column 'seeds': '{}'", field(row, "seeds")));
    e.seeds = static_cast<int>(seeds);
    e.floor = *value("floor");
    const std::string& scale = field(row, "scale");
    if (scale != "bound" && scale != "1") throw fail(fmt::format("column 'scale': '{}' (bound or 1)", scale));
    e.scaled = scale == "bound";
    e.bound_log_mean = value("bound_log_mean", true);
    e.bound_log_std = value("bound_log_std", true).value_or(0.0);
    for (const char* metric : kBandMetrics) {
      const std::string m = metric;
      Band b;
      b.seeds = e.seeds;
      b.log_mean = value(m + "_log_mean", true);
      b.log_std = value(m + "_log_std", !b.log_mean).value_or(0.0);
      b.min = *value(m + "_min");
      b.max = *value(m + "_max");
      b.hi = *value(m + "_band_hi");
      b.zeros = b.min == 0 ? 1 : 0;  // at least one seed gave exactly 0
      e.bands[m] = b;
    }
    const std::string& bitwise = field(row, "bitwise");
    if (bitwise == "1" || bitwise == "0") {
      e.bitwise = bitwise == "1";
    } else if (!bitwise.empty()) {
      throw fail(fmt::format("column 'bitwise': '{}' (1, 0 or empty)", bitwise));
    }
    const std::string& hashes = field(row, "hashes");
    if (!hashes.empty()) {
      for (const std::string& item : split(hashes, ';')) {
        const std::size_t colon = item.find(':');
        if (colon == std::string::npos || colon == 0) {
          throw fail(fmt::format("column 'hashes': '{}' is not seed:hash", item));
        }
        e.hashes.emplace_back(item.substr(0, colon), item.substr(colon + 1));
      }
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

std::string short_key(const ResultRow& row) {
  std::string text = fmt::format("{} {} {} {}", field(row, "variant"), field(row, "pass"), field(row, "dtype"),
                                 field(row, "distribution"));
  const std::string& nq = field(row, "seqlen_q");
  const std::string& nk = field(row, "seqlen_k");
  text += nq == nk ? " N=" + nq : fmt::format(" Nq={} Nk={}", nq, nk);
  text += " d=" + field(row, "head_dim");
  if (field(row, "head_dim_v") != field(row, "head_dim")) text += " dv=" + field(row, "head_dim_v");
  if (field(row, "causal") == "1") text += " causal";
  if (field(row, "window_left") != "-1" || field(row, "window_right") != "-1") {
    text += fmt::format(" window={},{}", field(row, "window_left"), field(row, "window_right"));
  }
  if (field(row, "heads") != field(row, "heads_kv"))
    text += fmt::format(" gqa={}:{}", field(row, "heads"), field(row, "heads_kv"));
  if (field(row, "batch") != "1") text += " B=" + field(row, "batch");
  if (field(row, "varlen") == "1") text += " varlen";
  return text;
}

CheckResult check_against(const RunTable& run, const std::vector<BaselineEntry>& baseline) {
  CheckResult result;
  result.run_seed = run.seed;
  if (!baseline.empty() && baseline.front().suite != run.suite) {
    throw CheckError(fmt::format("{}: a run of suite '{}'; the baseline is of suite '{}'", run.dir.string(), run.suite,
                                 baseline.front().suite));
  }
  std::map<std::string, std::vector<const BaselineEntry*>> by_key;
  std::vector<std::string> key_order;
  for (const BaselineEntry& e : baseline) {
    if (by_key[e.key].empty()) key_order.push_back(e.key);
    by_key[e.key].push_back(&e);
    result.seed_recorded = result.seed_recorded || e.hash_of(run.seed) != nullptr;
  }
  std::set<std::string> run_keys;
  for (const ResultRow& row : run.rows) {
    const std::string& key = field(row, "key");
    run_keys.insert(key);
    const std::string index = field(row, "row_index");
    const auto found = by_key.find(key);
    if (found == by_key.end()) {
      result.not_in_baseline.push_back(index + " " + short_key(row));
      continue;
    }
    ++result.rows_checked;
    Regression base;
    base.row_index = parse_number(index).has_value() ? static_cast<std::int64_t>(*parse_number(index)) : -1;
    base.key = key;
    base.short_key = short_key(row);
    const std::string& status = field(row, "status");
    if (status == "error") {
      Regression r = base;
      r.tensor = "-";
      r.metric = "status";
      r.stored = "ok";
      r.value = "error: " + field(row, "reason");
      result.regressions.push_back(r);
      continue;
    }
    if (status != "ok") {
      result.not_run.push_back(fmt::format("{} {}: {} ({})", index, base.short_key, status, field(row, "reason")));
      continue;
    }
    const std::string platform = run.platform(row);
    for (const BaselineEntry* e : found->second) {
      ++result.pairs_checked;
      const std::string prefix = "err_" + e->tensor + "_";
      bool missing = e->scaled && field(row, prefix + "bound").empty();
      for (const char* metric : kBandMetrics) missing = missing || field(row, prefix + metric).empty();
      if (missing) {
        Regression r = base;
        r.tensor = e->tensor;
        r.metric = "verify";
        r.stored = "present";
        r.value = "missing";
        result.regressions.push_back(r);
      } else {
        // A scaled band is in units of this run's bound for the row: shown in absolute units for this run's data.
        double unit = 1;
        if (e->scaled) {
          const std::optional<double> bound = parse_number(field(row, prefix + "bound"));
          unit = bound && std::isfinite(*bound) && *bound > 0 ? *bound : std::numeric_limits<double>::quiet_NaN();
          if (e->bound_log_mean && outside_spread(unit, *e->bound_log_mean, e->bound_log_std, e->seeds)) {
            result.bound_moved.push_back(fmt::format("{} {} {}", index, base.short_key, e->tensor));
          }
        }
        for (const char* metric : kBandMetrics) {
          const double value = run_number(run, row, prefix + metric);
          const Band& band = e->bands.at(metric);
          double limit = band.hi * unit;
          if (band.zeros > 0 || !band.log_mean)
            limit = std::max(limit, e->floor);  // an exact 0 may stay within the floor
          if (value <= limit) continue;         // a NaN (value or bound) is a regression too
          Regression r = base;
          r.tensor = e->tensor;
          r.metric = metric;
          r.stored = shown(band.stored() * unit);
          r.value = shown(value);
          r.ratio = band.stored() > 0 ? shown(value / (band.stored() * unit)) : "-";
          r.band_hi = shown(limit);
          result.regressions.push_back(r);
        }
      }
      const std::string* recorded = e->hash_of(run.seed);
      if (!e->bitwise.value_or(false) || !recorded || recorded->empty()) continue;
      if (e->platform != platform) {
        ++result.hashes_other_platform;
        continue;
      }
      ++result.hashes_compared;
      const std::string& now = field(row, "hash_" + e->tensor);
      if (now == *recorded) continue;
      Regression r = base;
      r.tensor = e->tensor;
      r.metric = "hash";
      r.stored = *recorded;
      r.value = now.empty() ? "missing" : now;
      result.regressions.push_back(r);
    }
  }
  for (const std::string& key : key_order) {
    if (!run_keys.count(key)) result.not_in_run.push_back(short_key(by_key[key].front()->identity));
  }
  return result;
}

namespace {

const char* const kTableHeader[] = {"row_index", "key", "tensor", "stored", "new", "ratio", "band_hi", "metric"};

std::vector<std::string> table_row(const Regression& r) {
  return {
      std::to_string(r.row_index),         r.short_key, r.tensor, r.stored, r.value, r.ratio.empty() ? "-" : r.ratio,
      r.band_hi.empty() ? "-" : r.band_hi, r.metric};
}

std::string text_table(const std::vector<Regression>& regressions) {
  std::vector<std::vector<std::string>> cells = {{std::begin(kTableHeader), std::end(kTableHeader)}};
  for (const Regression& r : regressions) cells.push_back(table_row(r));
  std::vector<std::size_t> width(cells.front().size(), 0);
  for (const auto& row : cells) {
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string text;
  for (const auto& row : cells) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) line += fmt::format("{:<{}}  ", row[i], width[i]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    text += "  " + line + "\n";
  }
  return text;
}

std::string markdown_cell(std::string text) {
  std::string out;
  for (const char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

std::string seeds_of(const std::vector<BaselineEntry>& baseline) {
  std::vector<std::string> seeds;
  for (const auto& [seed, hash] : baseline.front().hashes) seeds.push_back(seed);
  return fmt::format("{}", fmt::join(seeds, ","));
}

}  // namespace

int record_baseline(const std::vector<std::filesystem::path>& dirs, const std::filesystem::path& out, bool repeat) {
  std::vector<RunTable> runs;
  for (const std::filesystem::path& dir : dirs) runs.push_back(load_run(dir));
  RecordSummary s;
  const std::vector<BaselineEntry> entries = make_baseline(runs, repeat, &s);
  write_baseline(out, entries);
  std::string repeats;
  if (s.repeats > 0) {
    repeats = fmt::format(" + {} repeated: bitwise repeatable {} of {} (row, tensor)", s.repeats, s.bitwise,
                          s.bitwise_tested);
  }
  fmt::print("{}: baseline of suite {}: {} (row, tensor) lines of {} rows, seeds {}{}\n", out.string(),
             runs.front().suite, entries.size(), s.rows, fmt::join(s.seeds, ","), repeats);
  fmt::print("left out: {} rows not ok in every run, {} rows not in every run\n", s.not_ok, s.not_everywhere);
  return kExitOk;
}

int check_run(const std::filesystem::path& run_dir, const std::filesystem::path& baseline_file,
              const std::filesystem::path& report) {
  const RunTable run = load_run(run_dir);
  const std::vector<BaselineEntry> baseline = read_baseline(baseline_file);
  const CheckResult r = check_against(run, baseline);
  std::set<std::int64_t> regressed_rows;
  for (const Regression& g : r.regressions) regressed_rows.insert(g.row_index);
  const std::string seed_note = r.seed_recorded ? "recorded in the baseline: hashes compared where bitwise"
                                                : "not in the baseline: no hashes compared";
  const std::string verdict = r.passed() ? "no regression"
                                         : fmt::format("{} regression{} in {} row{}", r.regressions.size(),
                                                       r.regressions.size() == 1 ? "" : "s", regressed_rows.size(),
                                                       regressed_rows.size() == 1 ? "" : "s");

  fmt::print("check {} (suite {}, seed {}: {}) against {} (seeds {})\n", run_dir.string(), run.suite, r.run_seed,
             seed_note, baseline_file.string(), seeds_of(baseline));
  fmt::print("rows checked: {} ({} (row, tensor) pairs, {} hashes compared)\n", r.rows_checked, r.pairs_checked,
             r.hashes_compared);
  if (r.hashes_other_platform > 0) {
    fmt::print("warning: {} hashes not compared: recorded on {}, this run on another platform\n",
               r.hashes_other_platform, baseline.front().platform);
  }
  fmt::print("rows of the run missing from the baseline (not checked): {}\n", r.not_in_baseline.size());
  for (const std::string& row : r.not_in_baseline) fmt::print("  {}\n", row);
  if (!r.not_in_run.empty()) fmt::print("warning: baseline rows missing from the run: {}\n", r.not_in_run.size());
  for (const std::string& row : r.not_in_run) fmt::print("  {}\n", row);
  if (!r.bound_moved.empty()) {
    fmt::print(
        "warning: {} (row, tensor) bounds outside the spread recorded (did the bound or a data path change? then "
        "re-record the baseline):\n",
        r.bound_moved.size());
    for (std::size_t i = 0; i < r.bound_moved.size() && i < 10; ++i) fmt::print("  {}\n", r.bound_moved[i]);
    if (r.bound_moved.size() > 10) fmt::print("  ...\n");
  }
  if (!r.not_run.empty()) fmt::print("warning: baseline rows not run now: {}\n", r.not_run.size());
  for (const std::string& row : r.not_run) fmt::print("  {}\n", row);
  if (!r.passed()) fmt::print("regressed (row, tensor) pairs:\n{}", text_table(r.regressions));
  fmt::print("{}: {}\n", r.passed() ? "PASS" : "FAIL", verdict);

  if (!report.empty()) {
    std::string md = fmt::format("# Numerics check: {}\n\n", run.suite);
    md += fmt::format("- run: `{}` (seed {}: {})\n", run_dir.string(), r.run_seed, seed_note);
    md += fmt::format("- baseline: `{}` (seeds {})\n", baseline_file.string(), seeds_of(baseline));
    md += fmt::format("- rows checked: {} ({} (row, tensor) pairs, {} hashes compared)\n", r.rows_checked,
                      r.pairs_checked, r.hashes_compared);
    md += fmt::format("- rows of the run missing from the baseline: {}\n", r.not_in_baseline.size());
    md += fmt::format("- baseline rows missing from the run: {}\n", r.not_in_run.size());
    md += fmt::format("- baseline rows not run now (oom, unsupported): {}\n", r.not_run.size());
    md += fmt::format("- (row, tensor) bounds outside the spread recorded: {}\n", r.bound_moved.size());
    md += fmt::format("\n**{}**: {}\n", r.passed() ? "PASS" : "FAIL", verdict);
    if (!r.passed()) {
      md += "\n| " + fmt::format("{}", fmt::join(kTableHeader, " | ")) + " |\n|";
      for (std::size_t i = 0; i < std::size(kTableHeader); ++i) md += " --- |";
      md += "\n";
      for (const Regression& g : r.regressions) {
        std::vector<std::string> cells;
        for (const std::string& cell : table_row(g)) cells.push_back(markdown_cell(cell));
        md += "| " + fmt::format("{}", fmt::join(cells, " | ")) + " |\n";
      }
    }
    auto list = [&](const char* title, const std::vector<std::string>& items) {
      if (items.empty()) return;
      md += fmt::format("\n## {}\n\n", title);
      for (const std::string& item : items) md += "- " + markdown_cell(item) + "\n";
    };
    list("Rows of the run missing from the baseline", r.not_in_baseline);
    list("Baseline rows missing from the run", r.not_in_run);
    list("Baseline rows not run now", r.not_run);
    std::ofstream out(report);
    out << md;
    if (!out) throw std::runtime_error(fmt::format("{}: cannot write the report", report.string()));
  }
  return r.passed() ? kExitOk : kExitRowsFailed;
}

}  // namespace flashlab::harness
