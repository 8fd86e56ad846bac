// The T5 v1.1 encoder (CogVideoX's text encoder) as TorchScript parts: embed, N blocks, head.
// embed.forward(ids[B,T] i64) -> (hidden[B,T,D], position_bias[1,heads,T,T] f32)
// block.forward(hidden, position_bias) -> hidden
// head.forward(hidden) -> embeddings[B,T,D] (final RMSNorm)
#pragma once

#include <torch/script.h>

#include "models/presets.h"
#include "models/script_builder.h"

namespace reel {

void BuildT5Embed(const T5Config& cfg, ScriptBuilder& b);
void BuildT5Block(const T5Config& cfg, ScriptBuilder& b);
void BuildT5Head(const T5Config& cfg, ScriptBuilder& b);

}  // namespace reel
