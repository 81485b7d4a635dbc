import { test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ENV_FLAGS, ServerConfig, VLLM_SPELLINGS } from "../../src/config.ts";
import { parseFlags, renderFlagHelp, UsageError } from "../../src/cli/flags.ts";
import { parseServeFlags } from "../../src/cli/main.ts";
import { VERSION } from "../../src/version.ts";

/** `gym-edge serve ARGS` parsed, with no environment. */
const serve = (...args: string[]) => parseServeFlags(args, true, {});

/** The UsageError message parsing `gym-edge serve ARGS` ends with. */
function usageError(...args: string[]): string {
  try {
    serve(...args);
  } catch (err) {
    assert.ok(err instanceof UsageError, `a UsageError, not ${err}`);
    return err.message;
  }
  assert.fail(`serve ${args.join(" ")} parsed`);
}

test("flags default to vllm-like values when none are given", () => {
  const c = parseFlags(ServerConfig, []);
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.port, 8000);
  assert.equal(c.device, "auto");
  assert.equal(c.model, undefined);
});

test("flags parse kebab-case names in both --flag value and --flag=value forms", () => {
  const c = parseFlags(ServerConfig, ["--port=9001", "--max-model-len", "2048", "--device", "wasm", "--model", "./m"]);
  assert.equal(c.port, 9001);
  assert.equal(c.maxModelLen, 2048);
  assert.equal(c.device, "wasm");
  assert.equal(c.model, "./m");
});

test("a bad flag value is a one-line usage error naming the flag", () => {
  assert.throws(() => parseFlags(ServerConfig, ["--port", "eighty"]), (e: unknown) => {
    assert.ok(e instanceof UsageError);
    assert.equal(e.message, "--port must be a whole number from 0 to 65535, not 'eighty'");
    return true;
  });
  assert.throws(() => parseFlags(ServerConfig, ["--device", "tpu"]), { message: "--device must be one of auto, cpu, wasm or webgpu, not 'tpu'" });
  assert.throws(() => parseFlags(ServerConfig, ["--nope"]), /unknown flag --nope/);
  assert.throws(() => parseFlags(ServerConfig, ["--port"]), /--port needs a value/);
});

test("every bad flag value reads as a sentence about the value, never in the schema library's words", () => {
  const cases: [string[], string][] = [
    [["--port", "abc"], "--port must be a whole number from 0 to 65535, not 'abc'"],
    [["--port", "99999"], "--port must be a whole number from 0 to 65535, not '99999'"],
    [["--port=8000.5"], "--port must be a whole number from 0 to 65535, not '8000.5'"],
    [["--max-num-seqs", "0"], "--max-num-seqs must be a whole number of 1 or more, not '0'"],
    [["--threads", "two"], "--threads must be a whole number of 1 or more, not 'two'"],
    [["--sampler-threads", "-1"], "--sampler-threads must be a whole number of 0 or more, not '-1'"],
    [["--keep-alive-timeout", "-5"], "--keep-alive-timeout must be a number of 0 or more, not '-5'"],
    [["--require-top-p", "1.5"], "--require-top-p must be a number from 0 to 1, not '1.5'"],
    [["--seed", "x"], "--seed must be a whole number, not 'x'"],
    [["--log-level", "loud"], "--log-level must be one of debug, info, warn or error, not 'loud'"],
    [["--dtype", "bfloat16"], "--dtype must be one of fp32, fp16, q8 or q4, not 'bfloat16'"],
    [["--kv-cache-memory", "lots"], "--kv-cache-memory must be a positive byte count such as 1073741824, 512MiB or 2GiB, not 'lots'"],
    [["--kv-cache-memory-bytes", "0"], "--kv-cache-memory-bytes must be a positive byte count such as 1073741824, 512MiB or 2GiB, not '0'"],
    [["--max-model-len", "4k5"], "--max-model-len must be a whole number of tokens of 1 or more, such as 4096, 32k (32,000) or 32K (32,768), not '4k5'"],
    [["--override-generation-config", "temperature=0.6"], `--override-generation-config must be a JSON object such as '{"temperature": 0.6}', not 'temperature=0.6'`],
    [["--model="], "--model needs a value, and was given an empty one"],
    [["--prefix-caching=maybe"], "--prefix-caching takes true or false, not 'maybe'"],
    [["--no-port"], "--no-port is not a flag: --port takes a value"],
    [["stray", "extra"], "'extra' is not a flag: flags start with -- (see --help)"],
  ];
  for (const [args, message] of cases) assert.equal(usageError(...args), message, args.join(" "));
  for (const [args] of cases) {
    const message = usageError(...args);
    assert.doesNotMatch(message, /expected|received|Invalid|Too (big|small)|NaN/, message);
    assert.ok(!message.includes("\n"));
  }
});

test("serve MODEL takes the model by position, as vllm serve does; given twice it must agree", () => {
  assert.equal(serve("Qwen/Qwen3-0.6B", "--port", "9000").model, "Qwen/Qwen3-0.6B");
  assert.equal(serve("--port", "9000", "./local").model, "./local");
  assert.equal(serve("./m", "--model", "./m").model, "./m");
  assert.match(usageError("./a", "--model", "./b"), /^--model \.\/b and '\.\/a' both name the model: give it once$/);
  assert.match(usageError("--model", "./b", "./a"), /^'\.\/a' and --model \.\/b both name the model: give it once$/);
  // Without `serve` a bare word stays an error: a mistyped command must not become a model path.
  assert.throws(() => parseServeFlags(["./m"], false, {}), /'\.\/m' is not a flag/);
});

test("--served-model-name takes several names after one flag or the flag repeated", () => {
  assert.deepEqual(serve("--served-model-name", "a", "b", "--port", "1").servedModelName, ["a", "b"]);
  assert.deepEqual(serve("--served-model-name", "a", "--served-model-name=b").servedModelName, ["a", "b"]);
  assert.deepEqual(serve("./m", "--served-model-name", "policy").servedModelName, ["policy"]);
  assert.equal(serve().servedModelName, undefined);
  // The library takes one name as a string too.
  assert.deepEqual(ServerConfig.parse({ servedModelName: "x" }).servedModelName, ["x"]);
});

test("vLLM's spellings of gym-edge's flags set the same settings", () => {
  assert.equal(serve("--enable-prefix-caching").prefixCaching, true);
  assert.equal(serve("--enable-return-sampling-mask").enableReturnSamplingMask, true);
  assert.equal(serve("--return-sampling-mask").enableReturnSamplingMask, true);
  assert.equal(serve().enableReturnSamplingMask, false);
  assert.equal(serve("--no-enable-prefix-caching").prefixCaching, false);
  assert.equal(serve("--no-prefix-caching").prefixCaching, false);
  assert.equal(serve().logRequests, true);
  assert.equal(serve("--disable-log-requests").logRequests, false);
  assert.equal(serve("--disable-uvicorn-access-log").logRequests, false);
  assert.equal(serve("--no-log-requests", "--enable-log-requests").logRequests, true);
  assert.equal(serve("--uvicorn-log-level", "warning").logLevel, "warn");
  assert.equal(serve("--log-level=critical").logLevel, "error");
  assert.equal(serve("--kv-cache-memory-bytes", "2GiB").kvCacheMemory, 2 * 2 ** 30);
  assert.equal(serve("--download-dir", "/models").cacheDir, "/models");
  assert.equal(serve("--dtype", "float16").dtype, "fp16");
  assert.equal(serve("--dtype", "half").dtype, "fp16");
  assert.equal(serve("--dtype", "auto").dtype, "fp32");
  assert.equal(serve("--dtype", "float32").dtype, "fp32");
  assert.equal(serve("--logprobs-mode", "raw_logprobs").logprobsMode, "raw");
  assert.equal(serve("--max-model-len", "32k").maxModelLen, 32_000);
  assert.equal(serve("--max-model-len", "32K").maxModelLen, 32_768);
  assert.equal(serve("--max-model-len", "2048").maxModelLen, 2048);
  assert.equal(serve("--max-num-batched-tokens", "1k").maxNumBatchedTokens, 1000);
  assert.equal(serve("--max-num-seqs", "8").maxNumSeqs, 8);
  assert.equal(serve("--seed", "1234").seed, 1234);
  assert.equal(serve("--seed", "-1").seed, -1);
  assert.equal(serve("--generation-config", "vllm").generationConfig, "vllm");
  assert.equal(serve().generationConfig, "auto");
  assert.deepEqual(serve("--override-generation-config", '{"temperature": 0.5}').overrideGenerationConfig, { temperature: 0.5 });
  const c = serve("--host", "0.0.0.0", "--port", "8001", "--api-key", "k", "--tool-call-parser", "hermes");
  assert.deepEqual([c.host, c.port, c.apiKey, c.toolCallParser], ["0.0.0.0", 8001, "k", "hermes"]);
});

test("vLLM flags that mean nothing here are accepted with a warning saying why, or refused with a sentence", () => {
  const c = serve("--gpu-memory-utilization", "0.9", "--enforce-eager", "--trust-remote-code", "--port", "1");
  assert.equal(c.port, 1);
  assert.deepEqual(c.warnings, [
    "--gpu-memory-utilization has no meaning here and is ignored: the KV cache is sized in bytes with --kv-cache-memory",
    "--enforce-eager has no meaning here and is ignored: there are no CUDA graphs to capture",
    "--trust-remote-code has no meaning here and is ignored: no model code is downloaded: the architectures are built in",
  ]);
  // What happens anyway is accepted without a word; asking for the opposite is warned about.
  assert.deepEqual(serve("--enable-auto-tool-choice", "--enable-chunked-prefill", "--disable-log-stats").warnings, []);
  assert.match(serve("--no-enable-chunked-prefill").warnings[0], /^--no-enable-chunked-prefill has no meaning here and is ignored: /);
  // One device is what gym-edge does; more is refused.
  assert.deepEqual(serve("--tensor-parallel-size", "1", "-tp", "1", "--kv-cache-dtype", "auto").warnings, []);
  assert.equal(usageError("--tensor-parallel-size", "2"), "--tensor-parallel-size 2 cannot be honoured here: a model runs on one device");
  assert.equal(usageError("-tp", "4"), "-tp 4 cannot be honoured here: a model runs on one device");
  assert.match(usageError("--quantization", "awq"), /^--quantization awq cannot be honoured here: .*--dtype/);
  assert.match(usageError("--enable-lora"), /^--enable-lora cannot be honoured here: /);
  assert.match(usageError("--made-up-flag", "1"), /^unknown flag --made-up-flag \(see --help\)$/);
});

test("--chat-template reads a file, takes a template given inline, and refuses a path that does not exist", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "gym-edge-template-"));
  try {
    const file = path.join(dir, "template.jinja");
    writeFileSync(file, "{% for m in messages %}{{ m.content }}{% endfor %}");
    assert.equal(serve("--chat-template", file).chatTemplate, "{% for m in messages %}{{ m.content }}{% endfor %}");
    assert.equal(serve("--chat-template", "{{ messages[0].content }}").chatTemplate, "{{ messages[0].content }}");
    const missing = path.join(dir, "missing.jinja");
    assert.equal(usageError("--chat-template", missing), `--chat-template '${missing}' looks like a file path, but there is no such file`);
    assert.equal(
      usageError("--generation-config", dir),
      `--generation-config ${dir} must be auto, vllm, or a folder holding a generation_config.json, and ` +
        `${path.join(dir, "generation_config.json")} does not exist`,
    );
    assert.equal(
      usageError("--override-generation-config", '{"temperature": 7}'),
      "--override-generation-config sets temperature to 7, but it must be from 0 to 2",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the api key comes from the environment when no flag gives it", () => {
  const c = parseFlags(ServerConfig, [], { GYM_EDGE_API_KEY: "secret" }, ENV_FLAGS);
  assert.equal(c.apiKey, "secret");
  const d = parseFlags(ServerConfig, ["--api-key", "flag"], { GYM_EDGE_API_KEY: "secret" }, ENV_FLAGS);
  assert.equal(d.apiKey, "flag");
});

test("VLLM_API_KEY gives the api key as it does to vllm serve; GYM_EDGE_API_KEY comes first", () => {
  assert.equal(parseFlags(ServerConfig, [], { VLLM_API_KEY: "from-vllm" }, ENV_FLAGS).apiKey, "from-vllm");
  const both = { GYM_EDGE_API_KEY: "ours", VLLM_API_KEY: "from-vllm" };
  assert.equal(parseFlags(ServerConfig, [], both, ENV_FLAGS).apiKey, "ours");
  assert.equal(parseFlags(ServerConfig, ["--api-key", "flag"], both, ENV_FLAGS).apiKey, "flag");
  assert.match(renderFlagHelp(ServerConfig, ENV_FLAGS), /--api-key .*\(env GYM_EDGE_API_KEY or VLLM_API_KEY\)/);
});

test("the hub's address and token come from HF_ENDPOINT and HF_TOKEN as they do to vllm serve", () => {
  const env = { HF_ENDPOINT: "https://hf-mirror.example", HUGGING_FACE_HUB_TOKEN: "hf_old", HF_TOKEN: "hf_new" };
  const c = parseFlags(ServerConfig, [], env, ENV_FLAGS);
  assert.equal(c.hubUrl, "https://hf-mirror.example");
  assert.equal(c.hfToken, "hf_new");
  assert.equal(parseFlags(ServerConfig, [], { HUGGING_FACE_HUB_TOKEN: "hf_old" }, ENV_FLAGS).hfToken, "hf_old");
  assert.equal(parseFlags(ServerConfig, ["--hub-url", "http://127.0.0.1:9"], env, ENV_FLAGS).hubUrl, "http://127.0.0.1:9");
  assert.throws(() => parseFlags(ServerConfig, ["--hub-url", "ftp://mirror"], {}, ENV_FLAGS), /--hub-url must be an http:\/\/ or https:\/\/ address, not .ftp:\/\/mirror./);
  assert.throws(() => parseFlags(ServerConfig, [], { HF_ENDPOINT: "not a url" }, ENV_FLAGS), /HF_ENDPOINT/);
});

test("help lists every flag of the schema with its default", () => {
  const help = renderFlagHelp(ServerConfig, ENV_FLAGS);
  for (const key of Object.keys(ServerConfig.shape)) {
    const flag = "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
    assert.ok(help.includes(flag), `help lacks ${flag}`);
  }
  assert.match(help, /--port N\s+.*default 8000/);
  assert.match(help, /--device auto\|cpu\|wasm\|webgpu/);
  assert.match(help, /--prefix-caching .*--no-prefix-caching turns it off/);
  assert.match(help, /--served-model-name NAME \[NAME\.\.\.\]/);
});

test("README documents every server flag, and what becomes of each vLLM flag it spells", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  for (const key of Object.keys(ServerConfig.shape)) {
    const flag = "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
    assert.ok(readme.includes(flag), `README lacks ${flag}`);
  }
  for (const name of Object.keys(VLLM_SPELLINGS)) {
    const flag = name.length <= 2 ? `\`-${name}\`` : `\`--${name}\``;
    assert.ok(readme.includes(flag), `README lacks ${flag}`);
  }
});

test("the version constant matches package.json", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
  assert.equal(VERSION, pkg.version);
});

test("a required flag left out is named, with what it takes", () => {
  const Build = z.object({ out: z.string().min(1), dtype: z.enum(["fp32", "fp16", "q8", "q4"]) });
  assert.throws(() => parseFlags(Build, ["--dtype", "fp32"]), { message: "--out is required: it takes a non-empty value" });
  assert.throws(() => parseFlags(Build, ["--out", "x"]), { message: "--dtype is required: it takes one of fp32, fp16, q8 or q4" });
});
