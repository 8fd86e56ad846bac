#include "worker/sequence_lead.h"

#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "reel/v1/worker.grpc.pb.h"
#include "transfer/tensor_stream.h"

namespace reel {

torch::Tensor LeadSequence(grpc::ServerContext& parent, const v1::RunStageRequest& req, const std::string& host,
                           torch::Device device, std::chrono::milliseconds timeout,
                           const std::function<torch::Tensor(SequenceGroup&)>& share, v1::SequenceLink* link,
                           const std::string& guidance_store) {
  const int size = req.sequence_peers_size() + 1;
  struct Peer {
    std::unique_ptr<grpc::ClientContext> ctx;
    grpc::Status status;
    v1::SequenceShareResponse resp;
    std::thread call;
  };
  std::vector<Peer> peers(static_cast<size_t>(size - 1));
  // However this ends (a throw from `listening`, say), every peer's call has ended before this frame goes away.
  struct Join {
    std::vector<Peer>& peers;
    ~Join() {
      for (Peer& p : peers)
        if (p.call.joinable()) {
          p.ctx->TryCancel();
          p.call.join();
        }
    }
  } join{peers};
  v1::SequenceShareRequest base;
  *base.mutable_stage() = req;
  base.mutable_stage()->clear_sequence_peers();
  base.mutable_stage()->clear_sequence_guidance_peers();
  base.mutable_stage()->clear_guidance_peer();
  base.mutable_stage()->clear_guidance_peer_address();
  base.mutable_stage()->mutable_spec()->clear_image();  // the denoiser reads the image's moments, not the image
  base.set_size(size);
  auto listening = [&](const std::string& store) {
    for (int rank = 1; rank < size; ++rank) {
      Peer& p = peers[static_cast<size_t>(rank - 1)];
      p.ctx = grpc::ClientContext::FromServerContext(parent);
      v1::SequenceShareRequest call = base;
      call.set_rank(rank);
      call.set_store(store);
      if (rank - 1 < req.sequence_guidance_peers_size()) {  // the guided batch split besides: this rank's peer
        const auto& g = req.sequence_guidance_peers(rank - 1);
        call.mutable_stage()->set_guidance_peer(g.worker());
        call.mutable_stage()->set_guidance_peer_address(g.address());
        call.set_guidance_store(guidance_store);
      }
      const std::string address = req.sequence_peers(rank - 1).address();
      p.call = std::thread([&p, call = std::move(call), address] {
        p.status = v1::Worker::NewStub(ChannelTo(address))->SequenceShare(p.ctx.get(), call, &p.resp);
      });
    }
  };
  // What a failed peer said (a call that ended with an error other than this rank's own cancellation).
  auto peer_failure = [&](bool cancelled_too) -> std::optional<Error> {
    for (size_t i = 0; i < peers.size(); ++i) {
      const grpc::Status& st = peers[i].status;
      if (st.ok() || (!cancelled_too && st.error_code() == grpc::StatusCode::CANCELLED)) continue;
      const auto& peer = req.sequence_peers(static_cast<int>(i));
      return Unavailable(fmt::format("sequence-parallel rank {} on worker {} ({}): {}", i + 1, peer.worker(),
                                     peer.address(), st.error_message()));
    }
    return std::nullopt;
  };
  auto end_calls = [&](bool cancel) {
    for (Peer& p : peers)
      if (p.call.joinable()) {
        if (cancel) p.ctx->TryCancel();
        p.call.join();
      }
  };
  SequenceGroupSpec spec;
  spec.store = host + ":0";
  spec.rank = 0;
  spec.size = size;
  spec.timeout = timeout;
  spec.device = device;
  torch::Tensor out;
  v1::SequenceLink mine;
  try {
    SequenceGroup group(spec, listening);
    out = share(group);
    mine.set_backend(group.backend());
    mine.set_bytes_sent(group.bytes_sent());
    mine.set_exchange_seconds(group.exchange_seconds());
  } catch (const Error& e) {
    // The peers' calls end (a lost peer's has failed; the others' collectives fail with this rank gone): the
    // first that failed on its own is the cause to report.
    end_calls(true);
    if (auto cause = peer_failure(false); cause && e.kind() != ErrorKind::kCancelled) throw *cause;
    throw;
  }
  end_calls(false);
  if (auto failed = peer_failure(true)) throw *failed;
  if (link) {
    *link = mine;
    for (const Peer& p : peers)
      if (p.resp.exchange_seconds() > 0 && p.resp.exchange_seconds() < link->exchange_seconds()) {
        link->set_bytes_sent(p.resp.bytes_sent());
        link->set_exchange_seconds(p.resp.exchange_seconds());
      }
    link->set_ranks(size);
  }
  return out;
}

torch::Tensor DenoiseShare(Runtime& rt, SequenceGroup& group, const GenerateRequest& r, const torch::Tensor& text,
                           const torch::Tensor& moments, const GenerateHooks& hooks, const GuidanceBranch& branch) {
  rt.SetSequenceGroup(&group);
  struct Leave {
    Runtime& rt;
    ~Leave() { rt.SetSequenceGroup(nullptr); }
  } leave{rt};
  return rt.DenoiseLatents(r, text, moments, hooks, branch);
}

}  // namespace reel
