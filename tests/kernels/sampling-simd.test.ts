import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { argmax, copyRow, pickKept, rowArgmax, rowLogSumExp, SamplingScratch, truncate } from "../../kernels/sampling.ts";
import { assembleModule } from "../../kernels/wasm-assembler.ts";
import { Rng } from "../../src/engine/rng.ts";

/** Rows shaped like a model's (a broad bulk and a few tall candidates), with -inf, ties, +-0 and odd lengths. */
function rows(): { what: string; row: Float32Array }[] {
  const rng = Rng.fromSeed(11);
  const gaussian = () => Math.sqrt(-2 * Math.log(rng.nextUniform())) * Math.cos(2 * Math.PI * rng.nextUniform());
  const modelLike = (n: number) =>
    Float32Array.from({ length: n }, () => 2.5 * gaussian() + (rng.nextUniform() < 2e-3 ? 12 * rng.nextUniform() : 0));
  const masked = modelLike(4099).map((v, i) => (i % 3 === 0 ? -Infinity : v));
  const tied = Float32Array.from({ length: 1001 }, (_, i) => (i % 7 === 0 ? 3 : Math.round(gaussian() * 4) / 4));
  const signedZeros = Float32Array.from({ length: 9 }, (_, i) => (i % 2 === 0 ? -0 : 0));
  const allMasked = new Float32Array(6).fill(-Infinity);
  // A spread of 500 nats reaches past the exp table's floor (-104), where weights are 0.
  const wide = Float32Array.from({ length: 2049 }, () => (rng.nextUniform() - 0.5) * 500);
  return [
    { what: "model-like, Qwen's vocabulary", row: modelLike(151_936) },
    { what: "model-like, odd length", row: modelLike(50_257) },
    { what: "one token", row: Float32Array.of(-3) },
    { what: "a third masked", row: masked },
    { what: "ties", row: tied },
    { what: "signed zeros", row: signedZeros },
    { what: "all masked", row: allMasked },
    { what: "past the exp floor", row: wide },
  ];
}

function bits(values: Float64Array, n: number): string {
  return Buffer.from(values.buffer, values.byteOffset, n * 8).toString("hex");
}

describe("the sampler's SIMD passes (kernels/sampling-simd.ts)", () => {
  const capacity = 151_936;
  const simd = new SamplingScratch(capacity);
  const plain = new SamplingScratch(capacity, { simd: false });

  test("compile and run on this runtime", () => {
    assert.notEqual(simd.kernels, null, "WebAssembly SIMD is missing: the sampler would run its JavaScript passes");
    assert.equal(plain.kernels, null);
  });

  for (const { what, row } of rows()) {
    test(`give the JavaScript passes' bits: ${what}`, () => {
      const n = row.length;
      const best = copyRow(row, simd);
      assert.equal(best, copyRow(row, plain), "argmax");
      assert.deepEqual(simd.logits.subarray(0, n), plain.logits.subarray(0, n), "the copied row");
      const max = row[best];
      assert.equal(rowLogSumExp(simd, n, max), rowLogSumExp(plain, n, max), "log-sum-exp");
      for (const [temperature, minP] of [[1, 0], [0.7, 0], [1.3, 0.05], [0.01, 0]]) {
        for (const s of [simd, plain]) {
          s.argmax = best;
          s.max = max;
        }
        const z = truncate(simd, n, temperature, 0, 1, minP);
        assert.equal(simd.kept, "all");
        assert.equal(z, truncate(plain, n, temperature, 0, 1, minP), `Z at T=${temperature} min-p ${minP}`);
        assert.equal(bits(simd.weights, n), bits(plain.weights, n), `weights at T=${temperature} min-p ${minP}`);
        for (const u of [0, 1e-9, 0.25, 0.5, 0.999999, 1]) {
          assert.equal(pickKept(simd, n, u * z), pickKept(plain, n, u * z), `token at u=${u}, T=${temperature}`);
        }
      }
    });
  }

  test("leave NaN and +inf rows to the JavaScript pass that orders them", () => {
    const row = Float32Array.of(1, NaN, 2, Infinity, -Infinity, 0.5, NaN);
    assert.equal(copyRow(row, simd), copyRow(row, plain));
    assert.deepEqual(simd.logits.subarray(0, row.length), plain.logits.subarray(0, row.length));
  });

  test("the argmax of an edited row: the kernel's where every value is ordered, JavaScript's past +inf", () => {
    const row = Float32Array.from({ length: 1003 }, (_, i) => Math.sin(i));
    copyRow(row, simd);
    simd.logits.fill(-Infinity, 0, 500);
    assert.equal(rowArgmax(simd, row.length), argmax(simd.logits, row.length));
    assert.ok(rowArgmax(simd, row.length) >= 500);
    // A bias on the largest float32 overflows to +inf: the kernel declines, and JavaScript's argmax finds it.
    simd.logits[700] = Infinity;
    assert.equal(simd.kernels!.argmaxIfOrdered(row.length), -1);
    assert.equal(rowArgmax(simd, row.length), 700);
  });

  test("rows shorter than the last one do not see its tail", () => {
    copyRow(Float32Array.from({ length: 64 }, (_, i) => i), simd);
    // The previous row's larger values sit past n; the argmax must come from the first n only.
    assert.equal(copyRow(Float32Array.of(1, 5, 2, 5, 0), simd), 1);
  });
});

describe("the WebAssembly assembler", () => {
  test("refuses an unknown instruction and an unknown local, naming the function", () => {
    const fn = (body: string) => [{ name: "f", params: [["a", "i32"]] as [string, "i32"][], result: "i32" as const, body }];
    assert.throws(() => assembleModule(fn("local.get $a i32.frobnicate")), /f: unknown instruction i32.frobnicate/);
    assert.throws(() => assembleModule(fn("local.get $b")), /f: no local \$b/);
    assert.throws(() => assembleModule(fn("block $x local.get $a")), /f: 1 block\(s\) not ended/);
  });

  test("assembles loops, labels and SIMD lanes into a module that runs", () => {
    const bytes = assembleModule([{
      name: "sumTo",
      params: [["n", "i32"]],
      result: "f64",
      locals: [["i", "i32"], ["acc", "v128"]],
      body: `
        block $done loop $next
          local.get $i local.get $n i32.ge_s br_if $done
          local.get $acc local.get $i f64.convert_i32_s f64x2.splat f64x2.add local.set $acc
          local.get $i i32.const 1 i32.add local.set $i
          br $next
        end end
        local.get $acc f64x2.extract_lane 0 local.get $acc f64x2.extract_lane 1 f64.add`,
    }]);
    const memory = new WebAssembly.Memory({ initial: 1 });
    const { sumTo } = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports as {
      sumTo(n: number): number;
    };
    assert.equal(sumTo(10), 90);
    assert.equal(sumTo(0), 0);
  });
});
