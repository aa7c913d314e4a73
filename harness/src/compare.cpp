#include "flashlab/harness/compare.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "flashlab/harness/results.hpp"
#include "flashlab/harness/verify.hpp"

namespace flashlab::harness {
namespace {

struct Times {
  double median, p20, p80;
};

// A row's recorded times, when it is ok and has them.
std::optional<Times> times_of(const ResultRow& row) {
  if (field(row, "status") != "ok") return std::nullopt;
  const auto median = parse_number(field(row, "time_median_ms"));
  const auto p20 = parse_number(field(row, "time_p20_ms"));
  const auto p80 = parse_number(field(row, "time_p80_ms"));
  if (!median || !p20 || !p80 || !(*median > 0)) return std::nullopt;
  return Times{*median, *p20, *p80};
}

Verdict verdict_of(const Times& a, const Times& b, double same) {
  const double ratio = b.median / a.median;
  if (std::abs(ratio - 1) <= same) return Verdict::same;
  if (b.p80 < a.p20) return Verdict::faster;
  if (b.p20 > a.p80) return Verdict::slower;
  return Verdict::unclear;
}

// "variant pass dtype N=.. d=.. (causal) ..." for a table cell.
std::string describe(const ResultRow& r) {
  std::string text = fmt::format("{} {} {} B={} H={}", field(r, "variant"), field(r, "pass"), field(r, "dtype"),
                                 field(r, "batch"), field(r, "heads"));
  if (field(r, "heads_kv") != field(r, "heads")) text += " Hkv=" + field(r, "heads_kv");
  text += field(r, "seqlen_q") == field(r, "seqlen_k")
              ? fmt::format(" N={}", field(r, "seqlen_q"))
              : fmt::format(" Nq={} Nk={}", field(r, "seqlen_q"), field(r, "seqlen_k"));
  text += " d=" + field(r, "head_dim");
  if (field(r, "causal") == "1") text += " causal";
  if (field(r, "window_left") != "-1" || field(r, "window_right") != "-1") {
    text += fmt::format(" window={},{}", field(r, "window_left"), field(r, "window_right"));
  }
  if (field(r, "distribution") != "normal") text += " " + field(r, "distribution");
  if (field(r, "varlen") == "1") text += " varlen";
  return text;
}

std::string optional_number(const std::optional<double>& x, const char* format = "{:.4g}") {
  return x ? fmt::format(fmt::runtime(format), *x) : std::string();
}

std::string markdown_table(const Comparison& c) {
  std::string md = "| row | A ms | B ms | B / A | verdict |";
  std::string rule = "| --- | --- | --- | --- | --- |";
  for (const char* t : kOutputTensors) {
    md += fmt::format(" err {} B / A |", t);
    rule += " --- |";
  }
  md += fmt::format("\n{}\n", rule);
  for (const RowComparison& r : c.rows) {
    std::string verdict = r.verdict ? name(*r.verdict) : "";
    if (r.status_a != "ok" || r.status_b != "ok") verdict = fmt::format("status {} / {}", r.status_a, r.status_b);
    md += fmt::format("| {} | {} | {} | {} | {} |", describe(r.identity), optional_number(r.time_a),
                      optional_number(r.time_b), optional_number(r.ratio, "{:.3f}"), verdict);
    for (const char* t : kOutputTensors) {
      const auto it = r.error_ratio.find(t);
      md += it == r.error_ratio.end() ? std::string("  |") : fmt::format(" {:.3g} |", it->second);
    }
    md += "\n";
  }
  return md;
}

void write_csv(const Comparison& c, const std::filesystem::path& path) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(fmt::format("{}: cannot be written", path.string()));
  std::vector<std::string> header = {"key"};
  header.insert(header.end(), identity_columns().begin(), identity_columns().end());
  for (const char* column : {"status_a", "status_b", "time_a_ms", "time_b_ms", "time_ratio", "verdict"}) {
    header.emplace_back(column);
  }
  for (const char* t : kOutputTensors) header.push_back(fmt::format("err_{}_ratio", t));
  for (std::size_t i = 0; i < header.size(); ++i) out << (i ? "," : "") << header[i];
  out << "\n";
  for (const RowComparison& r : c.rows) {
    std::vector<std::string> fields = {r.key};
    for (const std::string& column : identity_columns()) fields.push_back(field(r.identity, column));
    fields.insert(fields.end(), {r.status_a, r.status_b, optional_number(r.time_a, "{}"),
                                 optional_number(r.time_b, "{}"), optional_number(r.ratio, "{}"),
                                 r.verdict ? name(*r.verdict) : ""});
    for (const char* t : kOutputTensors) {
      const auto it = r.error_ratio.find(t);
      fields.push_back(it == r.error_ratio.end() ? std::string() : fmt::format("{}", it->second));
    }
    for (std::size_t i = 0; i < fields.size(); ++i) out << (i ? "," : "") << csv_escape(fields[i]);
    out << "\n";
  }
  if (!out.flush()) throw std::runtime_error(fmt::format("{}: write failed", path.string()));
}

}  // namespace

const char* name(Verdict verdict) {
  switch (verdict) {
    case Verdict::faster: return "faster";
    case Verdict::slower: return "slower";
    case Verdict::same: return "same";
    case Verdict::unclear: return "unclear";
  }
  return "unclear";
}

Comparison compare_runs(const RunTable& a, const RunTable& b, double same) {
  Comparison c;
  std::map<std::string, const ResultRow*> in_b;
  for (const ResultRow& row : b.rows) in_b[field(row, "key")] = &row;
  std::set<std::string> seen;
  double log_sum = 0;
  int ratios = 0;
  for (const ResultRow& ra : a.rows) {
    const std::string& key = field(ra, "key");
    seen.insert(key);
    const auto found = in_b.find(key);
    if (found == in_b.end()) {
      c.only_a.push_back(key);
      continue;
    }
    const ResultRow& rb = *found->second;
    RowComparison r;
    r.key = key;
    for (const std::string& column : identity_columns()) r.identity[column] = field(ra, column);
    r.status_a = field(ra, "status");
    r.status_b = field(rb, "status");
    const std::optional<Times> ta = times_of(ra), tb = times_of(rb);
    if (ta && tb) {
      r.time_a = ta->median;
      r.time_b = tb->median;
      r.ratio = tb->median / ta->median;
      r.verdict = verdict_of(*ta, *tb, same);
      ++c.counts[*r.verdict];
      log_sum += std::log(*r.ratio);
      ++ratios;
    }
    for (const char* t : kOutputTensors) {
      const std::string column = fmt::format("err_{}_max_abs", t);
      const auto ea = parse_number(field(ra, column)), eb = parse_number(field(rb, column));
      if (!ea || !eb) continue;
      r.error_ratio[t] = *ea > 0 ? *eb / *ea : (*eb > 0 ? std::numeric_limits<double>::infinity() : 1.0);
    }
    c.rows.push_back(std::move(r));
  }
  for (const ResultRow& rb : b.rows) {
    if (!seen.count(field(rb, "key"))) c.only_b.push_back(field(rb, "key"));
  }
  if (ratios > 0) c.geomean_ratio = std::exp(log_sum / ratios);
  return c;
}

int compare_command(const CompareOptions& options) {
  if (!(options.same >= 0) || !(options.threshold >= 1)) {
    throw CheckError(fmt::format("compare: --same must be >= 0 (found {}) and --threshold >= 1 (found {})",
                                 options.same, options.threshold));
  }
  const RunTable a = load_run(options.a), b = load_run(options.b);
  const Comparison c = compare_runs(a, b, options.same);
  if (c.rows.empty()) {
    throw CheckError(fmt::format("compare: {} and {} have no row key in common (suites {} and {})",
                                 a.csv.string(), b.csv.string(), a.suite, b.suite));
  }
  std::vector<const RowComparison*> failing;
  for (const RowComparison& r : c.rows) {
    if (options.fail_on_slower && r.verdict == Verdict::slower && *r.ratio > options.threshold) failing.push_back(&r);
  }
  const auto count = [&](Verdict v) {
    const auto it = c.counts.find(v);
    return it == c.counts.end() ? 0 : it->second;
  };
  std::string summary = fmt::format(
      "compare A = {} ({}) with B = {} ({}): {} rows in both, {} timed in both: {} faster, {} slower, {} same "
      "(medians within {:.3g}%), {} unclear; B / A geometric mean {}\n",
      a.dir.string(), a.device_name.empty() ? "cpu" : a.device_name, b.dir.string(),
      b.device_name.empty() ? "cpu" : b.device_name, c.rows.size(), count(Verdict::faster) + count(Verdict::slower) +
      count(Verdict::same) + count(Verdict::unclear), count(Verdict::faster), count(Verdict::slower),
      count(Verdict::same), 100 * options.same, count(Verdict::unclear), optional_number(c.geomean_ratio, "{:.4f}"));
  if (!c.only_a.empty() || !c.only_b.empty()) {
    summary += fmt::format("rows in A only: {}; in B only: {} (not compared)\n", c.only_a.size(), c.only_b.size());
  }
  if (options.fail_on_slower) {
    summary += failing.empty() ? fmt::format("PASS: no row slower than {}x\n", options.threshold)
                               : fmt::format("FAIL: {} rows slower than {}x:\n", failing.size(), options.threshold);
    for (const RowComparison* r : failing) summary += fmt::format("  {}: {:.3f}x\n", describe(r->identity), *r->ratio);
  }
  const std::string table = markdown_table(c);
  fmt::print("{}\n{}", summary, table);
  if (!options.markdown.empty()) {
    std::ofstream out(options.markdown);
    out << "# flashlab compare\n\n" << summary << "\n" << table;
    if (!out.flush()) throw std::runtime_error(fmt::format("{}: write failed", options.markdown.string()));
  }
  if (!options.csv.empty()) write_csv(c, options.csv);
  return failing.empty() ? 0 : 1;
}

}  // namespace flashlab::harness
