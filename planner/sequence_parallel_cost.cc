#include "planner/sequence_parallel_cost.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "common/error.h"

namespace reel::planner {

namespace {

int64_t Config(const StageManifest& s, const char* key, int64_t fallback) {
  auto it = s.config.find(key);
  return it == s.config.end() ? fallback : static_cast<int64_t>(std::llround(it->second));
}

int64_t Ceil(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Link DefaultLink(const std::string& kind) {
  // NVLink 4 on an H100 SXM: 450 GB/s each way, of which an all-to-all reaches about 70%; PCIe 4.0 x16 through
  // the host (the L40 machines of xDiT's figures): ~25 GB/s each way, about half of it in an all-to-all of 8;
  // loopback: Gloo over TCP between two processes on this 2-core machine (bench/sequence_parallel.sh).
  if (kind == "nvlink") return {"nvlink", 315e9, 20e-6};
  if (kind == "pcie") return {"pcie", 12e9, 30e-6};
  if (kind == "loopback") return {"loopback", 1.5e9, 100e-6};
  throw InvalidArgument(fmt::format("link '{}': accepted nvlink, pcie or loopback", kind));
}

std::string Link::Describe() const {
  const std::string rate = fmt::format("{} {:.2f} GB/s", name, bytes_per_second / 1e9);
  return measured_runs > 0 ? fmt::format("{} (measured, {} run{})", rate, measured_runs, measured_runs == 1 ? "" : "s")
                           : rate + " (an estimate)";
}

std::string LinkName(bool one_host, const std::string& backend) {
  // "gloo (host copies)": CUDA tensors over Gloo, timed with their copies.
  std::string b = backend;
  for (char& c : b)
    if (c == ' ') c = '-';
  b.erase(std::remove_if(b.begin(), b.end(), [](char c) { return c == '(' || c == ')'; }), b.end());
  return (one_host ? "host/" : "network/") + b;
}

Link MeasuredLink(const std::vector<LinkProfile>& measured, const Link& fallback) {
  std::vector<double> rates;
  for (const LinkProfile& p : measured) {
    if (rates.size() == 5) break;
    if (p.bytes_per_second() > 0) rates.push_back(p.bytes_per_second());
  }
  if (rates.empty()) return fallback;
  std::sort(rates.begin(), rates.end());
  const size_t n = rates.size();
  Link l;
  l.name = measured.front().link;
  l.bytes_per_second = n % 2 ? rates[n / 2] : (rates[n / 2 - 1] + rates[n / 2]) / 2;
  l.latency_seconds = 0;
  l.measured_runs = static_cast<int>(n);
  return l;
}

Link HostLink(const std::string& device_kind, const std::vector<LinkProfile>& measured) {
  const bool cuda = device_kind == "cuda";
  const std::string name = LinkName(true, cuda ? "nccl" : "gloo");
  std::vector<LinkProfile> mine;
  for (const LinkProfile& p : measured)
    if (p.link == name) mine.push_back(p);
  return MeasuredLink(mine, DefaultLink(cuda ? "pcie" : "loopback"));
}

SequenceParallelPrice PriceSequenceParallel(const CostModel& model, const Device& device, const Job& job,
                                            const std::string& dtype, int degree, bool guidance_split,
                                            const Link& link) {
  const Manifest& m = model.manifest();
  const StageManifest& s = m.stage(StageKind::kDenoiser);
  const int64_t heads = Config(s, "num_heads", 48), D = Config(s, "inner_dim", 3072), p = Config(s, "patch_size", 2);
  const int64_t layers = std::max<int64_t>(1, static_cast<int64_t>(s.parts.size()) - 2);
  if (degree < 1 || degree > heads)
    throw InvalidArgument(fmt::format("sequence-parallel degree {}: accepted 1 to the denoiser's {} heads", degree,
                                      heads));
  const bool split = guidance_split && job.batch() == 2;
  const int64_t f = (job.frames - 1) / m.vae.temporal_compression + 1;
  const int64_t L = f * (job.height / m.vae.spatial_compression / p) * (job.width / m.vae.spatial_compression / p);
  const int64_t T = m.tokenizer.max_length;
  const int64_t B = split ? 1 : job.batch();
  const int64_t bytes = dtype == "f32" ? 4 : 2;

  const Estimate one = model.Estimated(StageKind::kDenoiser, device, job, "none", dtype);
  SequenceParallelPrice price;
  price.degree = degree;
  price.guidance_split = split;
  price.single_seconds = one.compute_seconds;
  // The busiest device: the largest token share for the linears (text tokens on every device), the largest head
  // share for attention (every token), half the batch when guidance is split.
  const double total = one.dense_flops + one.attention_flops;
  const double dense_share = static_cast<double>(T + Ceil(L, degree)) / static_cast<double>(T + L);
  const double attention_share = static_cast<double>(Ceil(heads, degree)) / static_cast<double>(heads);
  const double share = total > 0 ? (one.dense_flops * dense_share + one.attention_flops * attention_share) / total
                                 : dense_share;
  price.compute_seconds = one.compute_seconds * share / (split ? 2.0 : 1.0);
  // What rank 0 (the largest shares: h0 heads, l0 tokens) sends. Per block: its tokens' q, k and v of the other
  // ranks' heads, its heads' attention output for the other ranks' tokens, and its heads' output for the text tokens
  // to every other rank; per step its tokens' projection (the head's output) to every other rank.
  const int64_t hd = D / heads, h0 = Ceil(heads, degree), l0 = Ceil(L, degree), away = degree - 1;
  const int64_t per_block = (3 * B * (heads - h0) * l0 * hd + B * h0 * (L - l0) * hd + B * h0 * T * hd * away) * bytes;
  const int64_t per_step = layers * per_block + B * l0 * p * p * Config(s, "out_channels", 16) * bytes * away;
  const int collectives = degree > 1 ? static_cast<int>(layers) * 5 + 1 : 0;
  price.bytes_sent = degree > 1 ? per_step * job.steps : 0;
  double comm = degree > 1 ? static_cast<double>(per_step) / link.bytes_per_second + collectives * link.latency_seconds
                           : 0.0;
  // Split guidance: the unconditional prediction [1, f, C, h, w] in f32 crosses once per step.
  if (split) comm += static_cast<double>(f * Config(s, "out_channels", 16) * (job.height / m.vae.spatial_compression) *
                                         (job.width / m.vae.spatial_compression) * 4) / link.bytes_per_second +
                     link.latency_seconds;
  price.comm_seconds = comm * job.steps;
  return price;
}

nlohmann::json ChooseSequenceDegree(const CostModel& model, const Device& device, const Job& job,
                                    const std::string& dtype, int devices, const Link& link, Objective objective) {
  const int64_t heads = Config(model.manifest().stage(StageKind::kDenoiser), "num_heads", 48);
  const bool latency = objective == Objective::kLatency;
  nlohmann::json out{{"device", device.name}, {"devices", devices}, {"link", link.name},
                     {"link_described", link.Describe()}, {"link_bytes_per_second", link.bytes_per_second},
                     {"link_measured_runs", link.measured_runs}, {"dtype", dtype},
                     {"objective", latency ? "latency" : "throughput"}, {"choices", nlohmann::json::array()}};
  struct Choice {
    SequenceParallelPrice price;
    double jobs_per_hour = 0;
  };
  std::vector<Choice> choices;
  for (const bool split : {false, true}) {
    if (split && job.batch() != 2) continue;
    for (int k = 1; k <= heads && k * (split ? 2 : 1) <= devices; ++k) {
      Choice c{PriceSequenceParallel(model, device, job, dtype, k, split, link), 0};
      c.jobs_per_hour = c.price.seconds() > 0 ? (devices / c.price.devices()) * 3600.0 / c.price.seconds() : 0;
      choices.push_back(c);
    }
  }
  auto name = [](const SequenceParallelPrice& p) {
    return p.guidance_split ? fmt::format("degree {} with the guidance split ({} devices)", p.degree, p.devices())
                            : fmt::format("degree {} ({} device{})", p.degree, p.devices(), p.devices() == 1 ? "" : "s");
  };
  size_t best = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    const bool better = latency ? c.price.seconds() < choices[best].price.seconds()
                                : c.jobs_per_hour > choices[best].jobs_per_hour;
    if (better) best = i;  // ties: the fewer devices, listed first
    out["choices"].push_back({{"degree", c.price.degree}, {"guidance_split", c.price.guidance_split},
                              {"devices", c.price.devices()}, {"seconds", c.price.seconds()},
                              {"compute_seconds", c.price.compute_seconds}, {"comm_seconds", c.price.comm_seconds},
                              {"bytes_sent", c.price.bytes_sent}, {"speedup", c.price.speedup()},
                              {"efficiency", c.price.speedup() / c.price.devices()},
                              {"jobs_per_hour", c.jobs_per_hour}, {"name", name(c.price)}});
  }
  out["chosen"] = best;
  out["why"] = nlohmann::json::array();
  const Choice& b = choices[best];
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i == best) continue;
    const Choice& c = choices[i];
    out["why"].push_back(
        latency ? fmt::format("{}: {:.3f} s, {:.2f}x one device ({:.0f}% of it on the exchanges); {:.3f} s "
                              "slower than {}",
                              name(c.price), c.price.seconds(), c.price.speedup(),
                              100.0 * c.price.comm_seconds / c.price.seconds(), c.price.seconds() - b.price.seconds(),
                              name(b.price))
                : fmt::format("{}: {:.1f} jobs/h from the {} devices ({:.2f}x one device on {}, efficiency {:.2f}); "
                              "{:.1f} jobs/h fewer than {}",
                              name(c.price), c.jobs_per_hour, devices, c.price.speedup(), c.price.devices(),
                              c.price.speedup() / c.price.devices(), b.jobs_per_hour - c.jobs_per_hour,
                              name(b.price)));
  }
  return out;
}

}  // namespace reel::planner
