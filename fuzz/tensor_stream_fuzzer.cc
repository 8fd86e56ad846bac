// libFuzzer target: the receiving end of a tensor transfer (transfer/tensor_stream.cc). The input is a
// reel.fuzz.TensorStreamInput (fuzz_input.proto): the FetchTensor chunks a peer sends, in order, and the call's
// status. They go through ReadTensor, the function FetchTensor and `reel submit --wait` read streams with (header,
// chunk reassembly, byte count, XXH3 check), over a stand-in for the gRPC reader; the first chunk also goes
// through FromChunk, the guidance branch's single-message form. A tensor that is accepted must be exactly what a
// worker can rebuild (its shape and dtype hold its bytes) and must survive being written out again. The same
// chunks also go through gRPC's wire path (serialized, cut into slices, decoded straight onto the tensor by
// transfer/chunk_serialization.h) and must give the same tensor or the same refusal.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <xxhash.h>

#include <google/protobuf/stubs/logging.h>

#include "fuzz/fuzz_check.h"
#include "fuzz/fuzz_input.pb.h"
#include "transfer/tensor_stream.h"

namespace {

using reel::v1::TensorChunk;

// Replays recorded chunks as a server stream would deliver them.
class ReplayReader : public grpc::ClientReaderInterface<TensorChunk> {
 public:
  ReplayReader(const std::vector<TensorChunk>& chunks, grpc::Status end) : chunks_(chunks), end_(std::move(end)) {}
  bool Read(TensorChunk* msg) override {
    if (next_ >= chunks_.size()) return false;
    *msg = chunks_[next_++];
    return true;
  }
  bool NextMessageSize(uint32_t* sz) override {
    if (next_ >= chunks_.size()) return false;
    *sz = static_cast<uint32_t>(chunks_[next_].ByteSizeLong());
    return true;
  }
  grpc::Status Finish() override { return end_; }
  void WaitForInitialMetadata() override {}

 protected:
  const std::vector<TensorChunk>& chunks_;
  grpc::Status end_;
  size_t next_ = 0;
};

// Delivers recorded chunks as gRPC's synchronous reader does: serialized, in slices, decoded on the reading thread
// (where ReadTensor's assembler takes the bytes straight from the slices).
class WireReader : public ReplayReader {
 public:
  WireReader(const std::vector<TensorChunk>& chunks, grpc::Status end, size_t slice)
      : ReplayReader(chunks, std::move(end)), slice_(std::max<size_t>(slice, 1)) {}
  bool Read(TensorChunk* msg) override {
    if (next_ >= chunks_.size()) return false;
    const std::string wire = chunks_[next_++].SerializeAsString();
    std::vector<grpc::Slice> slices;
    for (size_t at = 0; at < wire.size(); at += slice_)
      slices.emplace_back(wire.data() + at, std::min(slice_, wire.size() - at));
    grpc::ByteBuffer bb(slices.data(), slices.size());
    // What the serialized form of a parsed message decodes to: never a parse failure.
    REEL_FUZZ_CHECK(grpc::SerializationTraits<TensorChunk>::Deserialize(&bb, msg).ok(), "wire decode");
    return true;
  }

 private:
  size_t slice_;
};

// Collects what WriteTensor sends.
class CollectWriter : public grpc::internal::WriterInterface<TensorChunk> {
 public:
  bool Write(const TensorChunk& msg, grpc::WriteOptions) override {
    chunks.push_back(msg);
    return true;
  }
  std::vector<TensorChunk> chunks;
};

// What the worker's FromBlob relies on: a known dtype and a shape whose elements hold exactly the bytes.
void CheckAccepted(const reel::TensorBlob& blob) {
  REEL_FUZZ_CHECK(reel::Checksum(blob.data) == blob.xxh3, "checksum");
  REEL_FUZZ_CHECK(static_cast<int>(blob.shape.size()) <= reel::kMaxTensorRank, "rank");
  const int64_t element = reel::WireDTypeBytes(blob.dtype);
  REEL_FUZZ_CHECK(element > 0, blob.dtype);
  // Even an empty tensor's other dimensions multiply to at most kMaxTensorBytes: torch computes strides with them.
  __int128 n = element;
  bool empty = false;
  for (int64_t d : blob.shape) {
    REEL_FUZZ_CHECK(d >= 0, std::to_string(d));
    empty = empty || d == 0;
    if (d != 0) n *= d;
    REEL_FUZZ_CHECK(n <= reel::kMaxTensorBytes, "shape holds more than kMaxTensorBytes");
  }
  REEL_FUZZ_CHECK((empty ? 0 : n) == blob.bytes(), "shape does not hold the bytes");
}

void CheckStreamError(const std::string& error) {
  reel::fuzz::CheckErrorLine(error);
  REEL_FUZZ_CHECK(error.rfind("tensor stream: ", 0) == 0, error);
}

}  // namespace

// Protobuf logs every string field with invalid UTF-8 it parses; the fuzzer sends many.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  reel::fuzz::TensorStreamInput input;
  if (!input.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<TensorChunk> chunks(input.chunks().begin(), input.chunks().end());
  if (input.seal()) {
    XXH64_hash_t sum = 0;
    {
      std::string all;
      for (const auto& c : chunks) all += c.data();
      sum = XXH3_64bits(all.data(), all.size());
    }
    for (auto& c : chunks)
      if (c.has_header()) {
        c.mutable_header()->set_xxh3(sum);
        break;
      }
  }
  const int code = std::clamp(input.status_code(), 0, 16);
  const grpc::Status end(static_cast<grpc::StatusCode>(code), input.status_message());

  // The streamed form.
  ReplayReader reader(chunks, end);
  grpc::ClientContext ctx;
  grpc::Status status;
  std::string error;
  std::shared_ptr<const reel::TensorBlob> blob = reel::ReadTensor(reader, ctx, &status, &error);
  if (blob) {
    REEL_FUZZ_CHECK(status.ok(), status.error_message());
    reel::fuzz::Report("accepted", blob->dtype + " [" + [&] {
      std::string dims;
      for (int64_t d : blob->shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
      return dims;
    }() + "], " + std::to_string(blob->bytes()) + " bytes, checksum verified");
    CheckAccepted(*blob);
    // Written out again at any chunk size, it reads back the same.
    CollectWriter writer;
    REEL_FUZZ_CHECK(reel::WriteTensor(&writer, *blob, input.rewrite_chunk_bytes()), "WriteTensor");
    ReplayReader again(writer.chunks, grpc::Status::OK);
    grpc::ClientContext ctx2;
    auto copy = reel::ReadTensor(again, ctx2, &status, &error);
    REEL_FUZZ_CHECK(copy && copy->data == blob->data && copy->shape == blob->shape && copy->dtype == blob->dtype &&
                        copy->xxh3 == blob->xxh3,
                    error);
  } else if (status.ok()) {
    CheckStreamError(error);
    reel::fuzz::Report("refused", error);
  } else {
    REEL_FUZZ_CHECK(status.error_code() == end.error_code(), status.error_message());
    reel::fuzz::Report("refused", "the call's status: " + status.error_message());
  }

  // The wire path agrees with the plain one: the same tensor, or a refusal with the same line.
  {
    WireReader wire(chunks, end, static_cast<size_t>(std::clamp(input.wire_slice_bytes(), 1, 1 << 20)));
    grpc::ClientContext ctx3;
    grpc::Status wire_status;
    std::string wire_error;
    auto via_wire = reel::ReadTensor(wire, ctx3, &wire_status, &wire_error);
    REEL_FUZZ_CHECK(!via_wire == !blob, "the wire path " + std::string(via_wire ? "accepted" : "refused") + " (" +
                                            wire_error + ")");
    if (blob) {
      REEL_FUZZ_CHECK(via_wire->data == blob->data && via_wire->shape == blob->shape && via_wire->xxh3 == blob->xxh3,
                      "the wire path assembled other bytes");
    } else {
      REEL_FUZZ_CHECK(wire_error == error && wire_status.error_code() == status.error_code(),
                      "wire: " + wire_error + " | plain: " + error);
    }
  }

  // The single-message form.
  if (!chunks.empty()) {
    std::string one_error;
    auto one = reel::FromChunk(chunks.front(), &one_error);
    if (one)
      CheckAccepted(*one);
    else
      CheckStreamError(one_error);
  }
  return 0;
}
