// The receiving end of a tensor transfer (transfer/tensor_stream.cc) without a network: chunks replayed through
// ReadTensor and FromChunk. Includes the streams fuzz/tensor_stream_fuzzer.cc found refused too late or not at all.
// Then the zero-copy paths: streams through a real gRPC server, and hand-made wire bytes split across slices.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "reel/v1/worker.grpc.pb.h"
#include "transfer/tensor_stream.h"

namespace reel {
namespace testing {
// Waits (up to 5 s) until `p` is the only owner left of what it points to, less `others`.
template <typename T>
bool WaitUse(const std::shared_ptr<T>& p, long others) {
  for (int i = 0; i < 500 && p.use_count() > others; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return p.use_count() <= others;
}
}  // namespace testing
namespace {

using v1::TensorChunk;

class ReplayReader : public grpc::ClientReaderInterface<TensorChunk> {
 public:
  explicit ReplayReader(std::vector<TensorChunk> chunks, grpc::Status end = grpc::Status::OK)
      : chunks_(std::move(chunks)), end_(std::move(end)) {}
  bool Read(TensorChunk* msg) override {
    if (next_ >= chunks_.size()) return false;
    *msg = chunks_[next_++];
    return true;
  }
  bool NextMessageSize(uint32_t* sz) override {
    *sz = next_ < chunks_.size() ? static_cast<uint32_t>(chunks_[next_].ByteSizeLong()) : 0;
    return next_ < chunks_.size();
  }
  grpc::Status Finish() override { return end_; }
  void WaitForInitialMetadata() override {}

 private:
  std::vector<TensorChunk> chunks_;
  grpc::Status end_;
  size_t next_ = 0;
};

class CollectWriter : public grpc::internal::WriterInterface<TensorChunk> {
 public:
  bool Write(const TensorChunk& msg, grpc::WriteOptions) override {
    chunks.push_back(msg);
    return true;
  }
  std::vector<TensorChunk> chunks;
};

TensorBlob Sample() {
  TensorBlob b;
  b.dtype = "f32";
  b.shape = {2, 3};
  b.data.assign(24, '\x01');
  b.xxh3 = Checksum(b.data);
  return b;
}

struct Result {
  std::shared_ptr<const TensorBlob> blob;
  grpc::Status status;
  std::string error;
};

Result Read(std::vector<TensorChunk> chunks, grpc::Status end = grpc::Status::OK) {
  ReplayReader reader(std::move(chunks), std::move(end));
  grpc::ClientContext ctx;
  Result r;
  r.blob = ReadTensor(reader, ctx, &r.status, &r.error);
  return r;
}

std::vector<TensorChunk> Chunks(const TensorBlob& b, int chunk_bytes) {
  CollectWriter w;
  EXPECT_TRUE(WriteTensor(&w, b, chunk_bytes));
  return w.chunks;
}

// One header and one chunk of `data`, as a peer could send them.
std::vector<TensorChunk> Stream(const std::string& dtype, std::vector<int64_t> shape, int64_t total,
                                const std::string& data) {
  TensorChunk c;
  auto* h = c.mutable_header();
  h->set_dtype(dtype);
  for (int64_t d : shape) h->add_shape(d);
  h->set_total_bytes(total);
  h->set_xxh3(Checksum(data));
  c.set_offset(0);
  c.set_data(data);
  return {c};
}

TEST(TensorStream, ChunksReassembleToTheSameBlob) {
  const TensorBlob b = Sample();
  for (int chunk : {1, 5, 24, 100}) {
    const Result r = Read(Chunks(b, chunk));
    ASSERT_TRUE(r.blob) << r.error;
    EXPECT_EQ(r.blob->data, b.data);
    EXPECT_EQ(r.blob->shape, b.shape);
    EXPECT_EQ(r.blob->xxh3, b.xxh3);
  }
  TensorChunk one;
  ToChunk(b, &one);
  std::string error;
  ASSERT_TRUE(FromChunk(one, &error)) << error;
  // An empty tensor is a header and no bytes.
  TensorBlob empty;
  empty.dtype = "i64";
  empty.shape = {0, 7};
  empty.xxh3 = Checksum("");
  EXPECT_TRUE(Read(Chunks(empty, 4)).blob);
}

TEST(TensorStream, DamagedStreamsAreRefusedWithOneLine) {
  const TensorBlob b = Sample();
  auto chunks = Chunks(b, 10);
  auto error = [](std::vector<TensorChunk> c) {
    const Result r = Read(std::move(c));
    EXPECT_FALSE(r.blob);
    EXPECT_TRUE(r.status.ok());
    return r.error;
  };
  EXPECT_EQ(error({chunks[0], chunks[1]}), "tensor stream: ended after 20 of 24 bytes");
  EXPECT_EQ(error({}), "tensor stream: ended before its header");
  EXPECT_EQ(error({chunks[1]}), "tensor stream: the first chunk has no header");
  EXPECT_EQ(error({chunks[0], chunks[2]}), "tensor stream: chunk at offset 20 arrived after 10 bytes");
  auto extra = chunks;
  extra.push_back(chunks[2]);
  extra.back().set_offset(24);
  EXPECT_EQ(error(extra), "tensor stream: more than the 24 bytes the header announced");
  auto corrupt = chunks;
  corrupt[1].mutable_data()->at(0) ^= 1;
  const std::string mismatch = error(corrupt);
  EXPECT_EQ(mismatch.rfind("tensor stream: checksum ", 0), 0u) << mismatch;
  EXPECT_NE(mismatch.find(fmt::format("does not match the sender's {:016x}", b.xxh3)), std::string::npos) << mismatch;
  // The call's own failure is its status, not a bytes error.
  const Result cut = Read({chunks[0]}, grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset"));
  EXPECT_FALSE(cut.blob);
  EXPECT_EQ(cut.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

// Headers the fuzzer showed were trusted: an unknown dtype or a shape that does not hold the bytes reached the
// worker's FromBlob (torch::empty of the peer's shape, then a byte-count check after allocating it), and
// total_bytes was reserved up front whatever it claimed (1 TiB: allocation-size-too-big under ASan, bad_alloc or
// an OOM kill without it).
TEST(TensorStream, HeadersMustDescribeTheirBytes) {
  const std::string data(24, '\x02');
  // The streamed form and the single-message form (the guidance branch's latents) refuse alike.
  auto error = [](const std::vector<TensorChunk>& c) {
    const Result r = Read(c);
    EXPECT_FALSE(r.blob);
    std::string single;
    EXPECT_FALSE(FromChunk(c[0], &single));
    if (c[0].data().size() == static_cast<size_t>(c[0].header().total_bytes())) {
      EXPECT_EQ(single, r.error);
    }
    return r.error;
  };
  EXPECT_EQ(error(Stream("f64", {3}, 24, data)),
            "tensor stream: header dtype 'f64' is not one of f32, bf16, f16, i64, u8");
  EXPECT_EQ(error(Stream("f32\n", {6}, 24, data)),
            "tensor stream: header dtype 'f32\\x0a' is not one of f32, bf16, f16, i64, u8");
  EXPECT_EQ(error(Stream("u8", {4}, 5, "hello")),
            "tensor stream: header shape [4] of u8 holds 4 bytes, but total_bytes is 5");
  EXPECT_EQ(error(Stream("f32", {1000000, 1000000}, 24, data)),
            "tensor stream: header shape [1000000, 1000000] of f32 holds more than 1099511627776 bytes (1 TiB)");
  EXPECT_EQ(error(Stream("f32", {-2, -3}, 24, data)), "tensor stream: header shape [-2, -3] has a negative dimension");
  EXPECT_EQ(error(Stream("u8", {1, 1, 1, 1, 1, 1, 1, 1, 24}, 24, data)),
            "tensor stream: header shape has 9 dimensions, accepted at most 8");
  EXPECT_EQ(error(Stream("f32", {6}, -4, data)),
            "tensor stream: header total_bytes -4 is out of range, accepted 0 to 1099511627776 (1 TiB)");
  // An empty tensor whose other dimensions overflow (found by the fuzzer): the worker computes strides with them.
  EXPECT_EQ(error(Stream("f32", {INT64_MAX, 0}, 0, "")),
            "tensor stream: header shape [9223372036854775807, 0] of f32 holds more than 1099511627776 bytes (1 TiB)");
  EXPECT_EQ(error(Stream("f32", {7, 0}, 24, data)),
            "tensor stream: header shape [7, 0] of f32 holds 0 bytes, but total_bytes is 24");
  // 1 TiB announced, one byte sent: refused at the end without reserving the terabyte.
  EXPECT_EQ(error(Stream("u8", {int64_t{1} << 40}, int64_t{1} << 40, "x")),
            "tensor stream: ended after 1 of 1099511627776 bytes");
}

// ---- the zero-copy paths (transfer/chunk_serialization.h), through a real gRPC server and on hand-made bytes ----

TensorBlob Patterned(int64_t bytes) {
  TensorBlob b;
  b.dtype = "u8";
  b.shape = {bytes};
  b.data.resize(static_cast<size_t>(bytes));
  for (size_t i = 0; i < b.data.size(); ++i) b.data[i] = static_cast<char>((i * 2654435761u) >> 13);
  b.xxh3 = Checksum(b.data);
  return b;
}

class OneBlob final : public v1::Worker::Service {
 public:
  std::shared_ptr<const TensorBlob> blob;
  grpc::Status FetchTensor(grpc::ServerContext*, const v1::FetchTensorRequest* req,
                           grpc::ServerWriter<TensorChunk>* w) override {
    return WriteTensor(w, blob, req->chunk_bytes()) ? grpc::Status::OK : grpc::Status::CANCELLED;
  }
};

TEST(TensorStream, ZeroCopyStreamsOverGrpcArriveIntact) {
  OneBlob service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  ConfigureServer(builder);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_TRUE(server);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  // Below, at and above the zero-copy threshold (64 KiB), chunk sizes that do and do not divide the tensor.
  for (const int64_t bytes : {int64_t{0}, int64_t{1000}, int64_t{65536}, int64_t{65536 + 3}, int64_t{(5 << 20) + 7}}) {
    auto sent = std::make_shared<const TensorBlob>(Patterned(bytes));
    service.blob = sent;
    for (const int chunk : {65536, 100000, 4 << 20}) {
      const auto got = FetchTensor(address, "job", "t", chunk);
      ASSERT_TRUE(got);
      EXPECT_EQ(got->bytes(), bytes) << bytes << " in chunks of " << chunk;
      EXPECT_TRUE(got->data == sent->data) << bytes << " in chunks of " << chunk;
      EXPECT_EQ(got->xxh3, sent->xxh3);
      EXPECT_EQ(got->shape, sent->shape);
    }
    // The sent slices hold the blob only until gRPC has sent them.
    service.blob.reset();
    EXPECT_TRUE(testing::WaitUse(sent, 1)) << sent.use_count();
  }
  server->Shutdown();
}

// Deserializes `wire` (split into slices at every `cut` bytes) as gRPC hands it over, with `a` as the sink.
grpc::Status Deserialize(const std::string& wire, size_t cut, TensorAssembler& a, TensorChunk* msg) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < wire.size(); at += cut) slices.emplace_back(wire.data() + at, std::min(cut, wire.size() - at));
  grpc::ByteBuffer bb(slices.data(), slices.size());
  wire::t_sink = &a;
  const grpc::Status st = grpc::SerializationTraits<TensorChunk>::Deserialize(&bb, msg);
  wire::t_sink = nullptr;
  return st;
}

std::string Tagged(int field, const std::string& bytes) {
  std::string out(1, static_cast<char>((field << 3) | 2));
  for (uint64_t n = bytes.size();; n >>= 7) {
    out.push_back(static_cast<char>(n < 0x80 ? n : (n & 0x7f) | 0x80));
    if (n < 0x80) break;
  }
  return out + bytes;
}

TEST(TensorStream, ChunksDecodedStraightOntoTheTensorAcrossSliceBoundaries) {
  const TensorBlob b = Patterned(200000);
  TensorChunk first;
  ToChunk(b, &first);
  const std::string wire = first.SerializeAsString();
  for (const size_t cut : {size_t{1}, size_t{7}, size_t{4096}, wire.size()}) {
    TensorAssembler a;
    TensorChunk msg;
    ASSERT_TRUE(Deserialize(wire, cut, a, &msg).ok()) << cut;
    EXPECT_TRUE(msg.data().empty()) << "the bytes went into the message, not onto the tensor";
    std::string error;
    ASSERT_TRUE(a.Add(msg, &error)) << error;
    const auto got = a.Finish(&error);
    ASSERT_TRUE(got) << error;
    EXPECT_TRUE(got->data == b.data) << cut;
  }
}

TEST(TensorStream, ChunksInAnotherFieldOrderOrMalformedAreStillJudgedWhole) {
  const TensorBlob b = Patterned(100000);
  TensorChunk head;
  ToChunk(b, &head);
  const std::string header = head.header().SerializeAsString();
  // Decoded and assembled whole: the tensor's bytes, or the error.
  auto assembled = [](const std::string& wire) -> std::string {
    TensorAssembler a;
    TensorChunk msg;
    std::string error;
    if (!Deserialize(wire, 4096, a, &msg).ok()) return "decode failed";
    if (!a.Add(msg, &error)) return error;
    const auto got = a.Finish(&error);
    return got ? got->data : error;
  };
  // Data before the header (valid protobuf, not how Reel writes it): read into the message, then assembled.
  EXPECT_TRUE(assembled(Tagged(3, b.data) + Tagged(1, header)) == b.data);
  // Unknown fields after the data, a group among them (the fuzzer's find: protobuf keeps and re-sends them).
  const std::string group = std::string("\x4b\x08\x01\x4c", 4);  // field 9: start group, field 1 = 1, end group
  EXPECT_TRUE(assembled(Tagged(1, header) + Tagged(3, b.data) + group + Tagged(12, "x")) == b.data);
  // The data field twice: refused, not appended twice.
  {
    TensorAssembler a;
    TensorChunk msg;
    ASSERT_TRUE(Deserialize(Tagged(1, header) + Tagged(3, b.data) + Tagged(3, b.data), 4096, a, &msg).ok());
    std::string error;
    EXPECT_FALSE(a.Add(msg, &error));
    EXPECT_EQ(error, "tensor stream: a chunk carries its data field twice");
  }
  // More bytes than the header announces: refused by Add with the usual line, never appended.
  {
    TensorAssembler a;
    TensorChunk msg;
    ASSERT_TRUE(Deserialize(Tagged(1, header) + Tagged(3, b.data + b.data), 4096, a, &msg).ok());
    std::string error;
    EXPECT_FALSE(a.Add(msg, &error));
    EXPECT_EQ(error, "tensor stream: more than the 100000 bytes the header announced");
  }
  // Truncated (a length past the end) and a group wire type: INTERNAL, as protobuf's parser would fail.
  {
    TensorAssembler a;
    TensorChunk msg;
    const std::string whole = Tagged(1, header) + Tagged(3, b.data);
    EXPECT_EQ(Deserialize(whole.substr(0, whole.size() - 1), 4096, a, &msg).error_code(), grpc::StatusCode::INTERNAL);
    EXPECT_EQ(Deserialize(std::string(1, '\x0b') + std::string(70000, 'x'), 4096, a, &msg).error_code(),
              grpc::StatusCode::INTERNAL);
  }
}

}  // namespace
}  // namespace reel
