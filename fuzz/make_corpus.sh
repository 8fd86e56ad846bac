#!/usr/bin/env bash
# Writes the seed corpora fuzz/corpus/{manifest,job_request,tensor_stream}: manifests edited from the tiny preset's,
# and the protobuf inputs from the readable text below with `protoc --encode`. The presets' manifests
# (fuzz/manifests/*.json) are seeds too. Inputs the fuzzers found (found-*) are kept beside these, not written here.
# Needs python3, protoc, ffmpeg (the conditioning images), cc and libxxhash-dev (the stream checksums).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/fuzz/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Bytes as a protobuf text-format string literal.
escape() { od -An -v -to1 "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//; s/ /\\/g; s/^/\\/'; }

request() {  # NAME TEXT
  mkdir -p "$out/job_request"
  protoc --proto_path="$root/proto" --encode=reel.v1.SubmitJobRequest reel/v1/coordinator.proto <<<"$2" \
    >"$out/job_request/$1"
}
stream() {  # NAME TEXT
  mkdir -p "$out/tensor_stream"
  protoc --proto_path="$root/proto" --proto_path="$root" --encode=reel.fuzz.TensorStreamInput fuzz/fuzz_input.proto \
    <<<"$2" >"$out/tensor_stream/$1"
}

ffmpeg -loglevel error -y -f lavfi -i testsrc=size=24x16 -frames:v 1 "$tmp/fox.png"
ffmpeg -loglevel error -y -f lavfi -i testsrc=size=24x16 -frames:v 1 "$tmp/fox.jpg"
png=$(escape "$tmp/fox.png")
jpg=$(escape "$tmp/fox.jpg")

request valid-tiny 'spec { model: "tiny" prompt: "a red fox" frames: 9 height: 64 width: 64 steps: 4 guidance: 6 seed: 1 fps: 8 }'
request valid-tiny-defaults 'spec { model: "tiny" prompt: "a red fox" negative_prompt: "blurry" } priority: 10'
request valid-tiny-i2v-png "spec { model: \"tiny-i2v\" prompt: \"a red fox\" frames: 9 height: 64 width: 96 steps: 2 image: \"$png\" image_name: \"fox.png\" }"
request valid-5b-i2v-jpeg "spec { model: \"cogvideox-5b-i2v\" prompt: \"a red fox\" frames: 49 steps: 50 image: \"$jpg\" image_name: \"fox.jpg\" }"
request valid-2b 'spec { model: "cogvideox-2b" prompt: "a red fox" frames: 17 height: 480 width: 720 steps: 50 guidance: 6 seed: 42 fps: 8 } priority: -1000'
request bad-frames-10 'spec { model: "tiny" prompt: "a red fox" frames: 10 height: 64 width: 64 steps: 4 }'
request bad-frames-negative 'spec { model: "tiny" frames: -2147483648 }'
request bad-height-65 'spec { model: "tiny" height: 65 }'
request bad-width-over-model 'spec { model: "tiny" width: 4096 }'
request bad-pixels 'spec { model: "cogvideox-2b" height: 2048 width: 2048 }'
request bad-steps 'spec { model: "tiny" steps: -1 }'
request bad-guidance-nan 'spec { model: "tiny" guidance: nan }'
request bad-guidance-inf 'spec { model: "tiny" guidance: inf }'
request bad-fps 'spec { model: "tiny" fps: 100000 }'
request bad-priority 'spec { model: "tiny" } priority: 5000'
request bad-model 'spec { model: "cogvideox-9b\n" }'
request bad-i2v-without-image 'spec { model: "tiny-i2v" prompt: "a red fox" }'
request bad-t2v-with-image "spec { model: \"tiny\" image: \"$png\" image_name: \"fox.png\" }"
request bad-image-not-an-image 'spec { model: "tiny-i2v" image: "GIF89a not really" image_name: "fox.gif" }'
request bad-image-truncated-png "spec { model: \"tiny-i2v\" image: \"$(head -c 60 "$tmp/fox.png" >"$tmp/cut.png"; escape "$tmp/cut.png")\" image_name: \"cut.png\" }"
request bad-prompt-long "spec { model: \"tiny\" prompt: \"$(head -c 16400 /dev/zero | tr '\0' a)\" }"

# Manifests: the tiny preset with one thing wrong each (the presets themselves are fuzz/manifests/*.json).
mkdir -p "$out/manifest"
python3 - "$root/fuzz/manifests/tiny.json" "$out/manifest" <<'PY'
import json, sys
base, out = sys.argv[1], sys.argv[2]
def variant(name, edit):
    m = json.load(open(base))
    text = edit(m)
    open(f"{out}/{name}.json", "w").write(text if isinstance(text, str) else json.dumps(m, indent=1))
def parts(m): return m["stages"]["denoiser"]["parts"]
variant("bad-part-params-negative", lambda m: parts(m)[1].update(params=-5))
variant("bad-part-role", lambda m: parts(m)[1].update(role="blocks"))
variant("bad-part-file-escapes", lambda m: parts(m)[0].update(file="../../etc/passwd"))
variant("bad-parts-order", lambda m: parts(m).reverse())
variant("bad-stage-params-sum", lambda m: m["stages"]["denoiser"].update(params=1))
variant("bad-stage-missing", lambda m: m["stages"].pop("denoiser"))
variant("bad-stage-unknown", lambda m: m["stages"].update(upscaler={}))
variant("bad-format", lambda m: m.update(format="zip"))
variant("bad-format-version", lambda m: m.update(format_version=2))
variant("bad-seed-above-int64", lambda m: json.dumps(m).replace('"seed": 0', '"seed": 18446744073709551615'))
variant("bad-defaults-frames-10", lambda m: m["defaults"].update(frames=10))
variant("bad-defaults-guidance", lambda m: m["defaults"].update(guidance=500))
variant("bad-limits-frame-step", lambda m: m["limits"].update(frame_step=6))
variant("bad-limits-size-multiple", lambda m: m["limits"].update(size_multiple=4))
variant("bad-shape-symbol", lambda m: m["stages"]["denoiser"]["inputs"][0]["shape"].__setitem__(1, "Q"))
variant("bad-shape-zero", lambda m: m["stages"]["denoiser"]["inputs"][0]["shape"].__setitem__(1, 0))
variant("bad-tokenizer-kind", lambda m: m["tokenizer"].update(kind="wordpiece"))
variant("bad-tokenizer-pad-id", lambda m: m["tokenizer"].update(pad_id=-1))
variant("bad-i2v-without-encoder", lambda m: m.update(image_conditioned=True))
variant("bad-name-control", lambda m: m.update(name="tiny\u001b[2J"))
variant("bad-json-truncated", lambda m: json.dumps(m)[:700])
variant("bad-json-number-overflow", lambda m: json.dumps(m).replace('"scaling_factor": 0.7', '"scaling_factor": 1e999'))
PY

# A tensor: 2x3 f32 (24 bytes), sent whole and in chunks of 10 bytes, with its true XXH3-64.
cat >"$tmp/xxh3.c" <<'C'
#include <stdio.h>
#include <xxhash.h>
int main(void) { unsigned char b[1 << 16]; size_t n = fread(b, 1, sizeof b, stdin); printf("%llu\n", (unsigned long long)XXH3_64bits(b, n)); return 0; }
C
cc -O1 -o "$tmp/xxh3" "$tmp/xxh3.c" -lxxhash
printf '\000\000\200\077\000\000\000\100\000\000\100\100\000\000\200\100\000\000\240\100\000\000\300\100' >"$tmp/t.bin"
sum=$(<"$tmp/t.bin" "$tmp/xxh3")
all=$(escape "$tmp/t.bin")
a=$(head -c 10 "$tmp/t.bin" >"$tmp/a"; escape "$tmp/a")
b=$(tail -c +11 "$tmp/t.bin" | head -c 10 >"$tmp/b"; escape "$tmp/b")
c=$(tail -c +21 "$tmp/t.bin" >"$tmp/c"; escape "$tmp/c")
hdr="header { dtype: \"f32\" shape: 2 shape: 3 total_bytes: 24 xxh3: $sum }"

stream valid-one-chunk "chunks { $hdr offset: 0 data: \"$all\" }"
stream valid-three-chunks "chunks { $hdr offset: 0 data: \"$a\" } chunks { offset: 10 data: \"$b\" } chunks { offset: 20 data: \"$c\" } rewrite_chunk_bytes: 7"
stream valid-empty "chunks { header { dtype: \"f32\" shape: 0 shape: 3 total_bytes: 0 xxh3: 3244421341483603138 } offset: 0 }"
stream valid-u8-sealed "chunks { header { dtype: \"u8\" shape: 5 total_bytes: 5 } offset: 0 data: \"hello\" } seal: true"
stream bad-truncated "chunks { $hdr offset: 0 data: \"$a\" } chunks { offset: 10 data: \"$b\" }"
stream bad-checksum "chunks { header { dtype: \"f32\" shape: 2 shape: 3 total_bytes: 24 xxh3: 1 } offset: 0 data: \"$all\" }"
stream bad-no-header "chunks { offset: 0 data: \"$a\" }"
stream bad-offset "chunks { $hdr offset: 0 data: \"$a\" } chunks { offset: 12 data: \"$b\" }"
stream bad-too-many-bytes "chunks { $hdr offset: 0 data: \"$all\" } chunks { offset: 24 data: \"x\" }"
stream bad-total-negative "chunks { header { dtype: \"f32\" shape: 1 total_bytes: -4 } offset: 0 }"
stream bad-total-huge "chunks { header { dtype: \"u8\" shape: 1099511627776 total_bytes: 1099511627776 } offset: 0 data: \"x\" }"
stream bad-shape-mismatch "chunks { header { dtype: \"f32\" shape: 1000000 shape: 1000000 total_bytes: 24 } offset: 0 data: \"$all\" } seal: true"
stream bad-dtype "chunks { header { dtype: \"f64\" shape: 3 total_bytes: 24 } offset: 0 data: \"$all\" } seal: true"
stream bad-status "chunks { $hdr offset: 0 data: \"$a\" } status_code: 14 status_message: \"connection reset\""
stream bad-empty ""
echo "make_corpus: wrote $(ls "$out/manifest" | wc -l) manifest, $(ls "$out/job_request" | wc -l) job_request and" \
  "$(ls "$out/tensor_stream" | wc -l) tensor_stream seeds"
