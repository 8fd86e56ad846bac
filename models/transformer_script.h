// CogVideoXTransformer3DModel as TorchScript parts, so a runtime can stream it to a device block by block.
// embed.forward(latents[B,f,C,h,w], text[B,T,Dt], timestep[B] i64)
//     -> (video[B,N,D], text[B,T,D], emb[B,E], rope_cos[N,hd], rope_sin[N,hd])   (rope_* empty without RoPE)
// block.forward(video, text, emb, rope_cos, rope_sin) -> (video, text)
// head.forward(video, emb, f: int, h: int, w: int) -> velocity[B,f,C_out,h,w] f32
#pragma once

#include "models/presets.h"
#include "models/script_builder.h"

namespace reel {

void BuildTransformerEmbed(const TransformerConfig& cfg, int text_tokens, ScriptBuilder& b);
void BuildTransformerBlock(const TransformerConfig& cfg, ScriptBuilder& b);
void BuildTransformerHead(const TransformerConfig& cfg, ScriptBuilder& b);

// Elements of one attention score chunk: queries are processed in chunks so that the full score matrix
// (tens of GB at 49x480x720) is never materialised.
inline constexpr int64_t kAttentionChunkElements = int64_t{1} << 26;

}  // namespace reel
