// The throughput search: each device takes a configuration (an option or nothing per stage); a local search from
// two starts gives a first plan, then branch and bound over devices proves it best or improves it within budget.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "planner/search_internal.h"

namespace reel::planner::internal {
namespace {

// What one device holds.
struct Config {
  std::vector<int> option;   // per stage: option index, or -1
  std::vector<double> rate;  // per stage: jobs per second of that option, or 0
  uint32_t mask = 0;         // stages held
  int64_t peak = 0;          // device memory (DeviceUse)
  int64_t host = 0;          // host bytes, run-time bytes included (in a stream all stages run at once)
  int64_t pinned = 0;
  double value = 0;  // its rates at the LP's stage prices: max over stages of price × rate
};

// Device memory is not compared: every configuration fits its device alone and a device holds one, so its peak
// only breaks ties (Run keeps the peaks low at the end). Host memory counts only where a host could run short.
bool ConfigDominates(const Config& a, const Config& b, int stages, bool host_memory) {
  if (a.mask != b.mask || (host_memory && (a.host > b.host || a.pinned > b.pinned))) return false;
  for (int s = 0; s < stages; ++s)
    if (a.rate[s] < b.rate[s]) return false;
  return true;
}

// max c·x subject to A x ≤ b, x ≥ 0, with b ≥ 0 (the origin is feasible), by the tableau simplex with Bland's
// rule. Returns the duals of the rows, or nothing if it did not converge.
std::vector<double> SimplexDuals(const std::vector<std::vector<double>>& A, const std::vector<double>& b,
                                 const std::vector<double>& c) {
  const int m = static_cast<int>(A.size()), n = static_cast<int>(c.size());
  const int width = n + m + 1;
  std::vector<std::vector<double>> t(m + 1, std::vector<double>(width, 0));
  std::vector<int> basis(m);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) t[i][j] = A[i][j];
    t[i][n + i] = 1;
    t[i][width - 1] = b[i];
    basis[i] = n + i;
  }
  for (int j = 0; j < n; ++j) t[m][j] = -c[j];
  const double eps = 1e-12;
  for (int iter = 0; iter < 100 * (n + m) + 100; ++iter) {
    int enter = -1;
    for (int j = 0; j < n + m && enter < 0; ++j)
      if (t[m][j] < -eps) enter = j;
    if (enter < 0) {
      std::vector<double> duals(m);
      for (int i = 0; i < m; ++i) duals[i] = t[m][n + i];
      return duals;
    }
    int leave = -1;
    double best = 0;
    for (int i = 0; i < m; ++i) {
      if (t[i][enter] <= eps) continue;
      const double ratio = t[i][width - 1] / t[i][enter];
      if (leave < 0 || ratio < best - eps || (ratio <= best + eps && basis[i] < basis[leave])) {
        leave = i;
        best = ratio;
      }
    }
    if (leave < 0) return {};
    const double p = t[leave][enter];
    for (double& v : t[leave]) v /= p;
    for (int i = 0; i <= m; ++i) {
      if (i == leave || t[i][enter] == 0) continue;
      const double f = t[i][enter];
      for (int j = 0; j < width; ++j) t[i][j] -= f * t[leave][j];
    }
    basis[leave] = enter;
  }
  return {};
}

class ThroughputSearcher {
 public:
  ThroughputSearcher(const Rules& r, const Groups& g, Budget& budget)
      : r_(r), g_(g), budget_(budget), S_(r.num_stages), D_(r.num_devices) {}

  void Prepare() {
    BuildConfigs();
    ComputePrices();
    for (auto& cc : classes_) SortConfigs(cc);
    Order();
    const int P = static_cast<int>(pos_device_.size());
    cfg_at_.assign(P, 0);
    host_.assign(r_.num_hosts, 0);
    pinned_.assign(r_.num_hosts, 0);
    count_.clear();
    for (const ClassConfigs& cc : classes_) count_.emplace_back(cc.configs.size(), 0);
    active_.clear();
  }

  // The most jobs per hour any plan at least as good as `jobs_per_hour` could reach (the root's bound).
  double Bound(double jobs_per_hour) {
    Prepare();
    best_cost_ = 3600.0 / jobs_per_hour;
    const double lb = LowerBound(0);
    return std::isinf(lb) ? jobs_per_hour : 3600.0 / lb;
  }

  ThroughputResult Run(const std::vector<Replica>& seed, bool local_search) {
    Prepare();

    // First plans: the seed alone, and the seed with every other device given the most valuable configuration
    // its host still fits; each improved by local search.
    std::vector<int> start(D_, -1);
    std::vector<std::vector<int>> held(D_, std::vector<int>(S_, -1));
    for (int s = 0; s < S_; ++s) held[seed[s].device][s] = seed[s].option;
    for (int d = 0; d < D_; ++d) start[d] = classes_[g_.device_class[d]].index_of.at(held[d]);
    std::vector<int> a = start, b = start;
    if (local_search) {
      a = LocalSearch(start);
      b = LocalSearch(Fill(start));
    }
    const Eval ea = Evaluate(a), eb = Evaluate(b);
    best_ = CompareCost(eb.cost, eb.peaks, ea.cost, ea.peaks) < 0 ? b : a;
    const Eval e = Evaluate(best_);
    best_cost_ = e.cost;
    best_peaks_ = e.peaks;

    // Branch, unless the bound at the root already shows nothing does better: then the plan found is optimal
    // (plans that would only tie it are not worth the budget).
    const int P = static_cast<int>(pos_device_.size());
    const bool proven = CompareCost(LowerBound(0), 0, best_cost_, 0) >= 0;
    if (!proven) Visit(0, P > 0 && host_has_twin_[0]);
    const bool complete = proven || !budget_.exhausted();
    // Device peaks were left out of the comparisons: now give each device the configuration with the lowest
    // peak among those holding the same stages no slower, within its host's memory.
    std::vector<const Config*> chosen(D_);
    std::vector<int64_t> host(r_.num_hosts, 0), pinned(r_.num_hosts, 0);
    for (int d = 0; d < D_; ++d) {
      chosen[d] = &Cfg(d, best_[d]);
      host[r_.host_of[d]] += chosen[d]->host;
      pinned[r_.host_of[d]] += chosen[d]->pinned;
    }
    for (int d = 0; d < D_; ++d) {
      const Config* from = chosen[d];
      for (const Config& c : classes_[g_.device_class[d]].all)
        if (c.peak < chosen[d]->peak && ConfigDominates(c, *from, S_, false) && HostFits(d, *from, c, host, pinned))
          chosen[d] = &c;
      host[r_.host_of[d]] += chosen[d]->host - from->host;
      pinned[r_.host_of[d]] += chosen[d]->pinned - from->pinned;
    }
    ThroughputResult out;
    out.complete = complete;
    out.replicas.resize(S_);
    for (int d = 0; d < D_; ++d)
      for (int s = 0; s < S_; ++s)
        if (chosen[d]->option[s] >= 0) out.replicas[s].push_back({d, chosen[d]->option[s]});
    return out;
  }

 private:
  struct ClassConfigs {
    int device = 0;                            // a representative
    std::vector<Config> all;                   // every configuration that fits the device alone
    std::vector<Config> configs;               // those no other dominates, the empty configuration last
    std::map<std::vector<int>, int> index_of;  // option vector (dropped ones too) -> a configuration at least as good
    std::vector<double> best_rate;             // per stage, the fastest option that fits the device alone
    std::vector<std::vector<int>> by_rate;     // per stage, the configurations holding it, fastest first
  };
  struct Eval {
    double cost = 0;  // the largest load: seconds per job on the busiest device
    int at_max = 0;   // devices at that load
    int64_t peaks = 0;
  };

  const Config& Cfg(int d, int c) const { return classes_[g_.device_class[d]].configs[c]; }

  void BuildConfigs() {
    classes_.resize(g_.num_device_classes);
    std::vector<bool> done(g_.num_device_classes, false);
    for (int d = 0; d < D_; ++d) {
      const int k = g_.device_class[d];
      if (done[k]) continue;
      done[k] = true;
      ClassConfigs& cc = classes_[k];
      cc.device = d;
      std::vector<std::vector<int>> opts(S_);
      for (int s = 0; s < S_; ++s) opts[s] = UndominatedOptions(r_, s, d);
      Config cur;
      cur.option.assign(S_, -1);
      cur.rate.assign(S_, 0);
      Enumerate(d, opts, 0, DeviceUse{}, cur, cc.all);
    }
    // Could some host run short of RAM or pinned memory if each of its devices held its hungriest configuration?
    std::vector<int64_t> most_host(r_.num_hosts, 0), most_pinned(r_.num_hosts, 0);
    for (int d = 0; d < D_; ++d) {
      int64_t h = 0, p = 0;
      for (const Config& c : classes_[g_.device_class[d]].all) h = std::max(h, c.host), p = std::max(p, c.pinned);
      most_host[r_.host_of[d]] += h;
      most_pinned[r_.host_of[d]] += p;
    }
    host_memory_binds_ = false;
    for (int h = 0; h < r_.num_hosts; ++h)
      host_memory_binds_ =
          host_memory_binds_ || most_host[h] > r_.host_usable[h] || most_pinned[h] > r_.pinned_budget[h];
    for (ClassConfigs& cc : classes_) {
      const std::vector<Config>& all = cc.all;
      // Dominated configurations go; each maps to one that stays.
      std::vector<int> keeper(all.size(), -1);
      for (size_t i = 0; i < all.size(); ++i) {
        bool dominated = false;
        for (size_t j = 0; j < all.size() && !dominated; ++j)
          dominated = j != i && ConfigDominates(all[j], all[i], S_, host_memory_binds_) &&
                      (j < i || !ConfigDominates(all[i], all[j], S_, host_memory_binds_));
        if (!dominated) {
          keeper[i] = static_cast<int>(cc.configs.size());
          cc.configs.push_back(all[i]);
        }
      }
      for (size_t i = 0; i < all.size(); ++i) {
        int k2 = keeper[i];
        for (size_t j = 0; j < cc.configs.size() && k2 < 0; ++j)
          if (ConfigDominates(cc.configs[j], all[i], S_, host_memory_binds_)) k2 = static_cast<int>(j);
        cc.index_of[all[i].option] = k2;
      }
      cc.best_rate.assign(S_, 0);
      for (const Config& c : cc.configs)
        for (int s = 0; s < S_; ++s) cc.best_rate[s] = std::max(cc.best_rate[s], c.rate[s]);
    }
  }

  void Enumerate(int d, const std::vector<std::vector<int>>& opts, int s, DeviceUse use, Config& cur,
                 std::vector<Config>& out) {
    if (use.peak() > r_.device_usable[d]) return;
    if (s == S_) {
      cur.peak = use.peak();
      out.push_back(cur);
      return;
    }
    Enumerate(d, opts, s + 1, use, cur, out);  // the stage not held here
    for (int o : opts[s]) {
      const Option& op = r_.Opt(s, d, o);
      DeviceUse next = use;
      next.Add(op);
      Config saved = cur;
      cur.option[s] = o;
      cur.rate[s] = 1.0 / op.seconds;
      cur.mask |= 1u << s;
      cur.host += op.host_bytes + op.run_host_bytes;
      cur.pinned += op.pinned_bytes;
      Enumerate(d, opts, s + 1, next, cur, out);
      cur = saved;
    }
  }

  // Stage prices from the linear relaxation: devices time-share stages at their fastest options, maximise the
  // rate every stage reaches. Any prices give a valid bound (weak duality); the LP's give the tightest.
  void ComputePrices() {
    // Devices with the same fastest rates count together.
    std::map<std::vector<double>, double> count;
    for (int d = 0; d < D_; ++d) count[classes_[g_.device_class[d]].best_rate] += 1;
    const int K = static_cast<int>(count.size());
    std::vector<std::vector<double>> A(S_ + K, std::vector<double>(1 + S_ * K, 0));
    std::vector<double> b(S_ + K, 0), c(1 + S_ * K, 0);
    c[0] = 1;  // X
    int k = 0;
    for (const auto& [rates, n] : count) {
      for (int s = 0; s < S_; ++s) {
        A[s][0] = 1;
        A[s][1 + s * K + k] = -rates[s];  // X ≤ Σ rate × time
        A[S_ + k][1 + s * K + k] = 1;     // Σ time ≤ devices
      }
      b[S_ + k] = n;
      ++k;
    }
    std::vector<double> duals = SimplexDuals(A, b, c);
    price_.assign(S_, 1.0 / S_);
    double sum = 0;
    for (int s = 0; s < static_cast<int>(duals.size()) && s < S_; ++s) sum += std::max(0.0, duals[s]);
    if (sum > 0)
      for (int s = 0; s < S_; ++s) price_[s] = std::max(0.0, duals[s]) / sum;
    for (auto& cc : classes_) {
      for (Config& cfg : cc.configs) cfg.value = Value(cfg.rate);
    }
  }

  double Value(const std::vector<double>& rate) const {
    double v = 0;
    for (int s = 0; s < S_; ++s) v = std::max(v, price_[s] * rate[s]);
    return v;
  }

  // Most valuable first (more held at equal value), the empty configuration last; index_of follows.
  void SortConfigs(ClassConfigs& cc) {
    std::vector<int> order(cc.configs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
    auto total = [&](const Config& c) {
      double t = 0;
      for (int s = 0; s < S_; ++s) t += price_[s] * c.rate[s];
      return t;
    };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      const Config &x = cc.configs[a], &y = cc.configs[b];
      if ((x.mask == 0) != (y.mask == 0)) return y.mask == 0;
      return total(x) > total(y);
    });
    std::vector<int> where(order.size());
    std::vector<Config> sorted;
    for (size_t i = 0; i < order.size(); ++i) {
      where[order[i]] = static_cast<int>(i);
      sorted.push_back(cc.configs[order[i]]);
    }
    cc.configs = std::move(sorted);
    for (auto& [opts, idx] : cc.index_of) idx = where[idx];
    cc.by_rate.assign(S_, {});
    for (int s = 0; s < S_; ++s) {
      for (int c = 0; c < static_cast<int>(cc.configs.size()); ++c)
        if (cc.configs[c].mask >> s & 1) cc.by_rate[s].push_back(c);
      std::stable_sort(cc.by_rate[s].begin(), cc.by_rate[s].end(),
                       [&](int a, int b) { return cc.configs[a].rate[s] > cc.configs[b].rate[s]; });
    }
  }

  Eval Evaluate(const std::vector<int>& cfg) const {
    std::vector<double> rate(S_, 0);
    Eval e;
    for (int d = 0; d < D_; ++d) {
      const Config& c = Cfg(d, cfg[d]);
      for (int s = 0; s < S_; ++s) rate[s] += c.rate[s];
      e.peaks += c.peak;
    }
    std::vector<double> load(D_, 0);
    for (int d = 0; d < D_; ++d) {
      const Config& c = Cfg(d, cfg[d]);
      for (int s = 0; s < S_; ++s)
        if (c.mask >> s & 1) load[d] += 1.0 / rate[s];
      e.cost = std::max(e.cost, load[d]);
    }
    for (int d = 0; d < D_; ++d)
      if (load[d] >= e.cost * (1 - kTieTolerance)) ++e.at_max;
    return e;
  }

  static bool Improves(const Eval& a, const Eval& b) {  // a better than b: lower load, fewer at it, smaller peaks
    const int c = CompareCost(a.cost, 0, b.cost, 0);
    if (c != 0) return c < 0;
    if (a.at_max != b.at_max) return a.at_max < b.at_max;
    return a.peaks < b.peaks;
  }

  bool HostFits(int d, const Config& from, const Config& to, const std::vector<int64_t>& host,
                const std::vector<int64_t>& pinned) const {
    const int h = r_.host_of[d];
    return host[h] - from.host + to.host <= r_.host_usable[h] &&
           pinned[h] - from.pinned + to.pinned <= r_.pinned_budget[h];
  }

  std::vector<int> Fill(std::vector<int> cfg) const {
    std::vector<int64_t> host(r_.num_hosts, 0), pinned(r_.num_hosts, 0);
    for (int d = 0; d < D_; ++d) {
      host[r_.host_of[d]] += Cfg(d, cfg[d]).host;
      pinned[r_.host_of[d]] += Cfg(d, cfg[d]).pinned;
    }
    for (int d = 0; d < D_; ++d) {
      const Config& cur = Cfg(d, cfg[d]);
      if (cur.mask != 0) continue;
      const auto& list = classes_[g_.device_class[d]].configs;
      for (int c = 0; c < static_cast<int>(list.size()); ++c)
        if (HostFits(d, cur, list[c], host, pinned)) {
          host[r_.host_of[d]] += list[c].host;
          pinned[r_.host_of[d]] += list[c].pinned;
          cfg[d] = c;
          break;
        }
    }
    return cfg;
  }

  // Best-improvement local search over moves "m devices of one class holding configuration c take c2" (m = 1 or
  // all of them), judged on the largest load, then how many devices carry it, then the sum of peaks.
  std::vector<int> LocalSearch(std::vector<int> cfg) {
    const int K = g_.num_device_classes;
    std::vector<int> offset(K + 1, 0);
    for (int k = 0; k < K; ++k) offset[k + 1] = offset[k] + static_cast<int>(classes_[k].configs.size());
    Eval cur = Evaluate(cfg);
    for (int sweep = 0; sweep < 4 * D_ + 100; ++sweep) {
      if (budget_.OutOfTime()) break;
      std::vector<int> count(offset[K], 0), cover(S_, 0);
      std::vector<double> rate(S_, 0);
      std::vector<int64_t> host(r_.num_hosts, 0), pinned(r_.num_hosts, 0);
      for (int d = 0; d < D_; ++d) {
        const Config& c = Cfg(d, cfg[d]);
        ++count[offset[g_.device_class[d]] + cfg[d]];
        for (int s = 0; s < S_; ++s) rate[s] += c.rate[s], cover[s] += c.mask >> s & 1;
        host[r_.host_of[d]] += c.host;
        pinned[r_.host_of[d]] += c.pinned;
      }
      struct Group {
        int k, c, n;
      };
      std::vector<Group> active;
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < static_cast<int>(classes_[k].configs.size()); ++c)
          if (count[offset[k] + c] > 0) active.push_back({k, c, count[offset[k] + c]});
      struct Move {
        int k, c, c2, m;
        Eval e;
      };
      std::vector<Move> moves;
      std::vector<double> inv(S_);
      for (const Group& g : active) {
        const Config& from = classes_[g.k].configs[g.c];
        for (int c2 = 0; c2 < static_cast<int>(classes_[g.k].configs.size()); ++c2) {
          if (c2 == g.c) continue;
          const Config& to = classes_[g.k].configs[c2];
          for (int m = 1; m <= g.n; m = m == g.n ? g.n + 1 : g.n) {  // one device, then all of them
            bool covered = true;
            for (int s = 0; s < S_ && covered; ++s) {
              covered =
                  cover[s] - m * static_cast<int>(from.mask >> s & 1) + m * static_cast<int>(to.mask >> s & 1) > 0;
              inv[s] = 1.0 / (rate[s] + m * (to.rate[s] - from.rate[s]));
            }
            if (!covered) continue;
            Eval e;
            auto take = [&](const Config& cf, int n) {
              if (n <= 0) return;
              double load = 0;
              for (int s = 0; s < S_; ++s)
                if (cf.mask >> s & 1) load += inv[s];
              if (load > e.cost * (1 + kTieTolerance))
                e.cost = load, e.at_max = n;
              else if (load >= e.cost * (1 - kTieTolerance))
                e.at_max += n;
            };
            bool to_active = false;
            for (const Group& a : active) {
              int n = a.n;
              if (a.k == g.k && a.c == g.c) n -= m;
              if (a.k == g.k && a.c == c2) n += m, to_active = true;
              take(classes_[a.k].configs[a.c], n);
            }
            if (!to_active) take(to, m);
            e.peaks = cur.peaks + m * (to.peak - from.peak);
            if (Improves(e, cur)) moves.push_back({g.k, g.c, c2, m, e});
          }
        }
      }
      std::stable_sort(moves.begin(), moves.end(), [](const Move& a, const Move& b) { return Improves(a.e, b.e); });
      bool moved = false;
      for (const Move& mv : moves) {
        std::vector<int> next = cfg;
        std::vector<int64_t> h2 = host, p2 = pinned;
        int done = 0;
        const Config& from = classes_[mv.k].configs[mv.c];
        const Config& to = classes_[mv.k].configs[mv.c2];
        for (int d = 0; d < D_ && done < mv.m; ++d) {
          if (g_.device_class[d] != mv.k || cfg[d] != mv.c || !HostFits(d, from, to, h2, p2)) continue;
          h2[r_.host_of[d]] += to.host - from.host;
          p2[r_.host_of[d]] += to.pinned - from.pinned;
          next[d] = mv.c2;
          ++done;
        }
        if (done == 0) continue;
        const Eval e = Evaluate(next);
        if (!Improves(e, cur)) continue;
        cfg = std::move(next);
        cur = e;
        moved = true;
        break;
      }
      if (!moved) break;
    }
    return cfg;
  }

  // Positions: hosts of one class next to each other, and within a host devices by class, so that
  // interchangeable devices and hosts are neighbours the branching can keep in order.
  void Order() {
    std::vector<int> hosts(r_.num_hosts);
    for (int h = 0; h < r_.num_hosts; ++h) hosts[h] = h;
    std::stable_sort(hosts.begin(), hosts.end(), [&](int a, int b) { return g_.host_class[a] < g_.host_class[b]; });
    std::vector<int> first_pos_of_host(r_.num_hosts, -1);
    int prev_host = -1;
    for (int h : hosts) {
      std::vector<int> devs;
      for (int d = 0; d < D_; ++d)
        if (r_.host_of[d] == h) devs.push_back(d);
      if (devs.empty()) continue;
      std::stable_sort(devs.begin(), devs.end(), [&](int a, int b) { return g_.device_class[a] < g_.device_class[b]; });
      const bool twin = prev_host >= 0 && g_.host_class[prev_host] == g_.host_class[h];
      const int start = static_cast<int>(pos_device_.size());
      for (size_t i = 0; i < devs.size(); ++i) {
        pos_device_.push_back(devs[i]);
        host_start_.push_back(i == 0);
        host_has_twin_.push_back(twin);
        prev_same_.push_back(i > 0 && g_.device_class[devs[i - 1]] == g_.device_class[devs[i]]);
        twin_pos_.push_back(twin ? first_pos_of_host[prev_host] + static_cast<int>(i) : -1);
      }
      first_pos_of_host[h] = start;
      prev_host = h;
    }
    const int P = static_cast<int>(pos_device_.size());
    const int K = g_.num_device_classes;
    open_count_.assign(P + 1, std::vector<int>(K, 0));
    for (int p = P - 1; p >= 0; --p) {
      open_count_[p] = open_count_[p + 1];
      ++open_count_[p][g_.device_class[pos_device_[p]]];
    }
    rate_at_.assign(P + 1, std::vector<double>(S_, 0));
    value_at_.assign(P + 1, 0);
    inv_at_.assign(P + 1, std::vector<double>(S_, 0));
    cover_.assign(S_, 0);
    peaks_ = 0;
  }

  // A lower bound on the largest load of any plan that extends the devices decided before `pos` and is not
  // worse than the best so far (infinity: there is none). Every stage's rate is at most what the decided devices
  // give it plus the fastest rate of every open device; a device's load is at least the sum over its stages of
  // 1 / those rates — so a configuration whose load would already exceed the best so far is ruled out for the
  // open devices, which lowers the rates they can give, which rules out more, until nothing changes. Then the
  // bound is the largest of: the slowest stage, the busiest decided device, and the LP relaxation at the root's
  // prices. Leaves 1 / the rates in inv_at_[pos] for the caller to rule out configurations with.
  double LowerBound(int pos) {
    const double inf = std::numeric_limits<double>::infinity();
    const double limit = best_cost_ * (1 + kTieTolerance);
    const int K = g_.num_device_classes;
    const std::vector<int>& open = open_count_[pos];
    std::vector<std::vector<double>>& best = scratch_best_;
    best.resize(K);
    for (int k = 0; k < K; ++k) best[k] = classes_[k].best_rate;
    std::vector<double>& inv = inv_at_[pos];
    std::vector<double> next(S_);
    double lb = 0;
    for (int round = 0; round < 2 * S_ + 2; ++round) {
      lb = 0;
      for (int s = 0; s < S_; ++s) {
        double rmax = rate_at_[pos][s];
        for (int k = 0; k < K; ++k) rmax += open[k] * best[k][s];
        if (rmax <= 0) return inf;  // a stage nothing can hold any more
        inv[s] = 1.0 / rmax;
        lb = std::max(lb, inv[s]);
      }
      for (const auto& [ak, ac] : active_) lb = std::max(lb, Load(classes_[ak].configs[ac], inv));
      if (lb > limit) return inf;
      bool changed = false;
      for (int k = 0; k < K; ++k) {
        if (open[k] == 0) continue;
        const ClassConfigs& cc = classes_[k];
        for (int s = 0; s < S_; ++s) {
          next[s] = 0;
          for (int c : cc.by_rate[s])
            if (Load(cc.configs[c], inv) <= limit) {
              next[s] = cc.configs[c].rate[s];
              break;
            }
        }
        if (next != best[k]) {
          best[k] = next;
          changed = true;
        }
      }
      if (!changed) break;
    }
    double value = value_at_[pos];
    for (int k = 0; k < K; ++k) value += open[k] * Value(best[k]);
    return value > 0 ? std::max(lb, 1.0 / value) : inf;
  }

  double Load(const Config& c, const std::vector<double>& inv) const {
    double load = 0;
    for (int s = 0; s < S_; ++s)
      if (c.mask >> s & 1) load += inv[s];
    return load;
  }

  // Depth first over positions, configurations in order, interchangeable neighbours in non-decreasing order.
  void Visit(int pos, bool equal_to_twin) {
    const int P = static_cast<int>(pos_device_.size());
    if (pos == P) {
      double cost = 0;
      for (const auto& [k, c] : active_) cost = std::max(cost, Load(classes_[k].configs[c], inv_at_[P]));
      if (CompareCost(cost, peaks_, best_cost_, best_peaks_) < 0) {
        best_cost_ = cost;
        best_peaks_ = peaks_;
        for (int p = 0; p < P; ++p) best_[pos_device_[p]] = cfg_at_[p];
      }
      return;
    }
    if (!budget_.Spend()) return;
    if (CompareCost(LowerBound(pos), peaks_, best_cost_, best_peaks_) >= 0) return;
    const double limit = best_cost_ * (1 + kTieTolerance);
    const int d = pos_device_[pos], k = g_.device_class[d], h = r_.host_of[d];
    const std::vector<Config>& list = classes_[k].configs;
    int lo = 0;
    if (prev_same_[pos]) lo = cfg_at_[pos - 1];
    const bool tied = twin_pos_[pos] >= 0 && equal_to_twin;
    if (tied) lo = std::max(lo, cfg_at_[twin_pos_[pos]]);
    for (int c = lo; c < static_cast<int>(list.size()); ++c) {
      const Config& cf = list[c];
      if (Load(cf, inv_at_[pos]) > limit) continue;  // it would be busier than the best plan so far
      if (host_[h] + cf.host > r_.host_usable[h] || pinned_[h] + cf.pinned > r_.pinned_budget[h]) continue;
      cfg_at_[pos] = c;
      for (int s = 0; s < S_; ++s) {
        rate_at_[pos + 1][s] = rate_at_[pos][s] + cf.rate[s];
        cover_[s] += cf.mask >> s & 1;
      }
      value_at_[pos + 1] = value_at_[pos] + cf.value;
      host_[h] += cf.host;
      pinned_[h] += cf.pinned;
      peaks_ += cf.peak;
      if (count_[k][c]++ == 0) active_.push_back({k, c});
      if (pos + 1 == P) {
        bool covered = true;
        for (int s = 0; s < S_; ++s) {
          covered = covered && cover_[s] > 0;
          inv_at_[P][s] = 1.0 / rate_at_[P][s];
        }
        if (covered) Visit(P, false);
      } else {
        const bool next_equal = host_start_[pos + 1] ? host_has_twin_[pos + 1] : tied && c == cfg_at_[twin_pos_[pos]];
        Visit(pos + 1, next_equal);
      }
      if (--count_[k][c] == 0) active_.pop_back();
      for (int s = 0; s < S_; ++s) cover_[s] -= cf.mask >> s & 1;
      host_[h] -= cf.host;
      pinned_[h] -= cf.pinned;
      peaks_ -= cf.peak;
      if (budget_.exhausted()) return;
    }
  }

  const Rules& r_;
  const Groups& g_;
  Budget& budget_;
  const int S_, D_;
  std::vector<ClassConfigs> classes_;
  std::vector<double> price_;
  bool host_memory_binds_ = true;
  // Branching order and symmetry.
  std::vector<int> pos_device_;
  std::vector<bool> host_start_, host_has_twin_, prev_same_;
  std::vector<int> twin_pos_;
  std::vector<std::vector<int>> open_count_;  // [position][class]: devices of the class at positions ≥ p
  // Branching state.
  std::vector<int> cfg_at_;
  std::vector<std::vector<double>> rate_at_;  // stage rates of positions before p (a stack: no drift)
  std::vector<double> value_at_;
  std::vector<std::vector<double>> inv_at_;  // 1 / the most rate each stage can reach, at position p
  std::vector<std::vector<double>> scratch_best_;
  std::vector<int> cover_;
  std::vector<int64_t> host_, pinned_;
  std::vector<std::vector<int>> count_;
  std::vector<std::pair<int, int>> active_;
  int64_t peaks_ = 0;
  // The best plan: a configuration per device.
  std::vector<int> best_;
  double best_cost_ = 0;
  int64_t best_peaks_ = 0;
};

}  // namespace

ThroughputResult ThroughputSearch(const Rules& rules, const Groups& groups, const std::vector<Replica>& seed,
                                  bool local_search, Budget& budget) {
  return ThroughputSearcher(rules, groups, budget).Run(seed, local_search);
}

double ThroughputBound(const Rules& rules, const Groups& groups, double jobs_per_hour) {
  Budget budget{SearchOptions{}};
  return ThroughputSearcher(rules, groups, budget).Bound(jobs_per_hour);
}

}  // namespace reel::planner::internal
