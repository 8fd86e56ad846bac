// libFuzzer target: the receiving end of a tensor transfer (transfer/tensor_stream.cc). The input is a
// reel.fuzz.TensorStreamInput (fuzz_input.proto): the FetchTensor chunks a peer sends, in order, and the call's
// status. They go through ReadTensor, the function FetchTensor and `reel submit --wait` read streams with (header,
// chunk reassembly, byte count, XXH3 check), over a stand-in for the gRPC reader; the first chunk also goes
// through FromChunk, the guidance branch's single-message form. A tensor that is accepted must be exactly what a
// worker can rebuild (its shape and dtype hold its bytes) and must survive being written out again.
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

 private:
  const std::vector<TensorChunk>& chunks_;
  grpc::Status end_;
  size_t next_ = 0;
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
