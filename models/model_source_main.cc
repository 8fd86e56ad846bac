// reel_model_source: the TorchScript source and weight shapes of one stage part, from the same builders that
// synthesize the presets, so that tools/export writes packages with exactly the presets' source (one definition).
// Reads one JSON request per line on stdin, writes one JSON answer per line on stdout:
//   {"component": "text_encoder" | "denoiser" | "vae_encoder" | "vae_decoder", "part": "embed" | "block" | "head"
//    (text encoder and denoiser), "config": {...fields of models/presets.h's config struct...}, "text_tokens": N}
//   -> {"source": "...", "weights": [["name", [shape...]], ...], "keep_in_f32": ["name", ...]}  or
//      {"error": "one line"}   (keep_in_f32: the weights a float16 part holds in float32, ScriptBuilder::KeepInF32)
#include <iostream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "models/presets.h"
#include "models/script_builder.h"
#include "models/t5_script.h"
#include "models/transformer_script.h"
#include "models/vae_script.h"

using nlohmann::json;

// The configs' JSON form: their field names, every field optional (the struct's default where absent).
namespace reel {
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(T5Config, vocab_size, d_model, d_kv, num_heads, d_ff, num_layers,
                                                relative_buckets, relative_max_distance, eps)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TransformerConfig, num_heads, head_dim, num_layers, in_channels,
                                                out_channels, time_embed_dim, text_embed_dim, patch_size, ff_mult,
                                                rotary, learned_pos, sample_latent_frames, sample_latent_height,
                                                sample_latent_width, spatial_interpolation, temporal_interpolation,
                                                eps, patch_bias, flip_sin_to_cos, freq_shift, fused_attention)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(VaeConfig, in_channels, block_out_channels, layers_per_block,
                                                latent_channels, norm_groups, eps, temporal_levels,
                                                encode_frame_batch, decode_latent_batch)
}  // namespace reel

namespace {

json Answer(const json& request) {
  const std::string component = request.at("component").get<std::string>();
  const std::string part = request.value("part", std::string("module"));
  const json config = request.value("config", json::object());
  reel::ScriptBuilder::WeightlessScope weightless;  // shapes only: nothing is allocated
  reel::ScriptBuilder b("Reel", 0, torch::kFloat32);
  if (component == "text_encoder") {
    const auto c = config.get<reel::T5Config>();
    if (part == "embed") reel::BuildT5Embed(c, b);
    else if (part == "block") reel::BuildT5Block(c, b);
    else if (part == "head") reel::BuildT5Head(c, b);
    else throw std::invalid_argument("part '" + part + "': accepted embed, block or head");
  } else if (component == "denoiser") {
    const auto c = config.get<reel::TransformerConfig>();
    if (part == "embed") reel::BuildTransformerEmbed(c, request.at("text_tokens").get<int>(), b);
    else if (part == "block") reel::BuildTransformerBlock(c, b);
    else if (part == "head") reel::BuildTransformerHead(c, b);
    else throw std::invalid_argument("part '" + part + "': accepted embed, block or head");
  } else if (component == "vae_encoder") {
    reel::DefineVaeEncoder(config.get<reel::VaeConfig>(), b);
  } else if (component == "vae_decoder") {
    reel::DefineVaeDecoder(config.get<reel::VaeConfig>(), b);
  } else {
    throw std::invalid_argument("component '" + component +
                                "': accepted text_encoder, denoiser, vae_encoder or vae_decoder");
  }
  json weights = json::array();
  for (const auto& [name, shape] : b.weight_shapes()) weights.push_back(json::array({name, shape}));
  return {{"source", b.source()}, {"weights", weights}, {"keep_in_f32", b.keep_in_f32()}};
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    json answer;
    try {
      answer = Answer(json::parse(line));
    } catch (const std::exception& e) {
      answer = {{"error", e.what()}};
    }
    std::cout << answer.dump() << std::endl;
  }
  return 0;
}
