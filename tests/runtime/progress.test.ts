/**
 * Progress of long work: a line every few seconds when stderr is not a terminal, a bar redrawn in place when it is,
 * and the figures (share, amounts, rate, ETA) right; build-model reports each weights file's bytes as it writes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildModel } from "../../src/model/builder/build.ts";
import { getPreset } from "../../src/model/builder/presets.ts";
import { writeDownload } from "../../src/model/sources/model-source.ts";
import { Progress } from "../../src/progress.ts";

const MB = 2 ** 20;

test("without a terminal: one line per interval with share, amounts, rate and ETA, then a done line", () => {
  let now = 0;
  const lines: string[] = [];
  const p = new Progress("writing model.onnx_data", 100 * MB, "bytes", { log: (l) => lines.push(l), bar: false, now: () => now });
  now = 1000;
  p.set(10 * MB); // before the 5 s interval: silent
  assert.deepEqual(lines, []);
  now = 5000;
  p.set(50 * MB);
  now = 6000;
  p.set(60 * MB); // within the interval of the last line: silent
  now = 10_000;
  p.set(80 * MB);
  now = 12_500;
  p.set(100 * MB);
  p.finish();
  p.finish(); // once
  assert.deepEqual(lines, [
    "writing model.onnx_data: 50% (50 MB of 100 MB, 10.0 MB/s, ETA 5 s)",
    "writing model.onnx_data: 80% (80 MB of 100 MB, 8.0 MB/s, ETA 3 s)",
    "writing model.onnx_data: done, 100 MB in 12.5 s, 8.0 MB/s",
  ]);
});

test("counts of things, and a total that is not known", () => {
  let now = 0;
  const lines: string[] = [];
  const options = { log: (l: string) => lines.push(l), bar: false, now: () => now, everyMs: 1000 };
  const tensors = new Progress("converting", 40, { name: "tensors" }, options);
  now = 2000;
  tensors.add(10);
  const unknown = new Progress("downloading model.safetensors", null, "bytes", options);
  now = 4000;
  unknown.set(3 * MB);
  assert.deepEqual(lines, [
    "converting: 25% (10 tensors of 40 tensors, 5.0 tensors/s, ETA 6 s)",
    "downloading model.safetensors: 3.0 MB (1.5 MB/s)",
  ]);
});

test("on a terminal: a bar redrawn in place, left complete on its own line at the end", () => {
  let now = 0;
  const drawn: string[] = [];
  const lines: string[] = [];
  const p = new Progress("writing x", 200, "bytes", { log: (l) => lines.push(l), bar: true, now: () => now, write: (t) => drawn.push(t) });
  now = 100;
  p.set(50); // inside the 200 ms redraw interval
  now = 250;
  p.set(100);
  now = 500;
  p.set(200);
  p.finish();
  assert.equal(drawn.length, 3);
  assert.ok(drawn.every((d) => d.startsWith("\r") && d.includes("\x1b[K")));
  assert.match(drawn[0], /writing x \[#{12}\.{12}\] 50%/);
  assert.match(drawn[2], /\[#{24}\] 100%.*\n$/);
  assert.equal(lines.length, 1);
  assert.match(lines[0], /^writing x: done, /);
});

test("build-model reports each weights file's bytes written, up to the file's size", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-progress-"));
  try {
    const events: [string, number, number][] = [];
    const preset = { ...getPreset("tiny"), externalData: true };
    await buildModel({ preset, out, dtype: ["fp32", "q8"], onProgress: (file, done, total) => events.push([file, done, total]) });
    for (const file of ["onnx/model.onnx_data", "onnx/model_quantized.onnx_data"]) {
      const mine = events.filter(([f]) => f === file);
      assert.ok(mine.length > 10, `${file}: ${mine.length} reports`);
      const total = mine[0][2];
      assert.ok(mine.every(([, done, t], i) => t === total && done > 0 && (i === 0 || done > mine[i - 1][1])));
      assert.equal(mine.at(-1)![1], total);
      // The total is the weights' bytes: the file holds them, plus alignment padding.
      const size = fs.statSync(path.join(out, file)).size;
      assert.ok(total <= size && size - total < mine.length * 4096, `${total} of ${size}`);
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test("a hub download of a big file reports its progress in lines; a small one stays quiet", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-download-"));
  try {
    const lines: string[] = [];
    const big = new Uint8Array(20 * MB).fill(7);
    const body = (bytes: Uint8Array) =>
      new ReadableStream<Uint8Array>({
        start(controller) {
          for (let at = 0; at < bytes.length; at += MB) controller.enqueue(bytes.subarray(at, at + MB));
          controller.close();
        },
      });
    await writeDownload(dir, "model.safetensors", new Response(body(big)), (l) => lines.push(l));
    await writeDownload(dir, "tokenizer.json", new Response(body(new Uint8Array(1000))), (l) => lines.push(l));
    assert.equal(fs.statSync(path.join(dir, "model.safetensors")).size, 20 * MB);
    assert.equal(fs.statSync(path.join(dir, "tokenizer.json")).size, 1000);
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(lines[0], /^downloading model\.safetensors: done, 20 MB in \d+\.\d s/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
