/**
 * Start-up failures of the program, run as a child process: one clear line on stderr, a non-zero exit code, and no
 * stack trace unless --log-level debug asks for one.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { runToExit } from "../support/child-server.ts";

const SLOW = { timeout: 120_000 };
const STACK_LINE = /^\s+at /m;

let taken: net.Server;
let takenPort: number;
let notAModel: string;

before(async () => {
  taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
  takenPort = (taken.address() as net.AddressInfo).port;
  notAModel = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-not-a-model-"));
  fs.writeFileSync(path.join(notAModel, "notes.txt"), "not a model");
});
after(async () => {
  await new Promise((resolve) => taken.close(resolve));
  fs.rmSync(notAModel, { recursive: true, force: true });
});

/** The lines of stderr that are not ordinary log lines (those start with a timestamp). */
function messageLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.trim() !== "" && !/^\d{4}-\d\d-\d\dT[\d:.]+Z (INFO|DEBUG) /.test(l));
}

/** Runs the program, expecting it to fail with `code` and one line matching `message`. */
async function failsWith(args: string[], code: number, message: RegExp): Promise<void> {
  const { code: exit, stderr } = await runToExit(["--device", "cpu", ...args]);
  assert.equal(exit, code, stderr);
  assert.doesNotMatch(stderr, STACK_LINE, "no stack trace");
  const lines = messageLines(stderr);
  assert.equal(lines.length, 1, `one line says what went wrong:\n${stderr}`);
  assert.match(lines[0], message);
}

test("a port in use: one line naming the port and the flag, exit 1", SLOW, async () => {
  await failsWith(
    ["--port", String(takenPort)],
    1,
    new RegExp(`^gym-edge: port ${takenPort} on 127\\.0\\.0\\.1 is in use \\(pass --port\\)$`),
  );
});

test("a --host that is not an address of this machine: one line naming the flag, exit 1", SLOW, async () => {
  // TEST-NET-1 (RFC 5737): never assigned to a machine, so binding fails without any traffic.
  await failsWith(
    ["--host", "192.0.2.1", "--port", "0"],
    1,
    /^gym-edge: cannot listen on 192\.0\.2\.1: .*\(pass --host\)$/,
  );
});

test("a model path that does not exist: one line, exit 1", SLOW, async () => {
  const missing = path.join(notAModel, "missing");
  await failsWith(["--port", "0", "--model", missing], 1, /model load failed: .*does not exist/);
});

test("a directory that is not a model: one line naming what it lacks, exit 1", SLOW, async () => {
  await failsWith(["--port", "0", "--model", notAModel], 1, /model load failed: .*lacks config\.json/);
});

test("a bad flag value is a usage error: exit 2", SLOW, async () => {
  await failsWith(["--port", "99999"], 2, /^gym-edge: .*port/);
});

test("--log-level debug adds the stack trace of a start-up failure", SLOW, async () => {
  const { code, stderr } = await runToExit(["--device", "cpu", "--port", String(takenPort), "--log-level", "debug"]);
  assert.equal(code, 1, stderr);
  assert.match(stderr, /gym-edge: port \d+ on 127\.0\.0\.1 is in use/);
  assert.match(stderr, STACK_LINE);
});

test("gym-edge serve MODEL loads MODEL, as vllm serve does", SLOW, async () => {
  const missing = path.join(notAModel, "missing");
  const { code, stderr } = await runToExit(["serve", missing, "--device", "cpu", "--port", "0"]);
  assert.equal(code, 1, stderr);
  const lines = messageLines(stderr);
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0], new RegExp(`model load failed: .*${missing.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}.*does not exist`));
});

test("a word that is no command is a usage error that shows the serve command: exit 2", SLOW, async () => {
  const { code, stderr } = await runToExit(["Qwen/Qwen3-0.6B", "--port", "0"]);
  assert.equal(code, 2, stderr);
  assert.deepEqual(messageLines(stderr), [
    "gym-edge: 'Qwen/Qwen3-0.6B' is not a command (serve, build-model); to serve a model from it, run: gym-edge serve Qwen/Qwen3-0.6B",
  ]);
});

test("a vLLM flag that cannot be honoured is a usage error with the reason: exit 2", SLOW, async () => {
  await failsWith(["--tensor-parallel-size", "2"], 2, /^gym-edge: --tensor-parallel-size 2 cannot be honoured here: a model runs on one device$/);
});
