// sample-rows.wgsl for calls where no row has an allowed mask: every token is allowed (see row-words.wgsl).

fn masked(i: u32, b: u32) -> u32 {
  return b;
}
