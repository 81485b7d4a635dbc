import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { ENV_FLAGS, ServerConfig } from "../../src/config.ts";
import { parseFlags, renderFlagHelp, UsageError } from "../../src/cli/flags.ts";
import { VERSION } from "../../src/version.ts";

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
    assert.match(e.message, /^--port 'eighty'/);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
  assert.throws(() => parseFlags(ServerConfig, ["--device", "tpu"]), /--device 'tpu'/);
  assert.throws(() => parseFlags(ServerConfig, ["--nope"]), /unknown flag --nope/);
  assert.throws(() => parseFlags(ServerConfig, ["--port"]), /--port needs a value/);
});

test("the api key comes from the environment when no flag gives it", () => {
  const c = parseFlags(ServerConfig, [], { GYM_EDGE_API_KEY: "secret" }, ENV_FLAGS);
  assert.equal(c.apiKey, "secret");
  const d = parseFlags(ServerConfig, ["--api-key", "flag"], { GYM_EDGE_API_KEY: "secret" }, ENV_FLAGS);
  assert.equal(d.apiKey, "flag");
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
});

test("README documents every server flag", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  for (const key of Object.keys(ServerConfig.shape)) {
    const flag = "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
    assert.ok(readme.includes(flag), `README lacks ${flag}`);
  }
});

test("the version constant matches package.json", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
  assert.equal(VERSION, pkg.version);
});
