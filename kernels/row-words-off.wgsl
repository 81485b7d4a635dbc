// sample-rows.wgsl for calls where no row has an allowed mask or asks for its kept set: every token is allowed, no
// set is written (see row-words.wgsl).

fn masked(i: u32, b: u32) -> u32 {
  return b;
}

fn storeKept(cutKey: u32, cutId: u32, useMinP: bool) {}
