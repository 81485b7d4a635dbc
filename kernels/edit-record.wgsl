// One logit edit as the host packs it (EDIT_WORDS words, kernels/gpu-sampler.ts). logit-edits.wgsl applies it and
// keeps the token's original logit in `orig`; sample-rows.wgsl reads that back for raw log-probabilities. The
// loader (kernels/webgpu.ts) puts this file before each of them.

struct Edit {
  // Index into the logits buffer: row * vocab + token.
  index: u32,
  // 1: masked, 2: the repetition penalty applies (logit-edits.wgsl's MASK and REPEATED).
  flags: u32,
  bias: f32,
  repetition: f32,
  subtract: f32,
  orig: u32,
  pad0: u32,
  pad1: u32,
}
