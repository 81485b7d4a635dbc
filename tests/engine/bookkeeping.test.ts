/**
 * The engine's bookkeeping under long random interleavings, on the real tiny model run by onnxruntime: submit,
 * abort at any point, preemption (a small KV budget), weight updates in every mode, sleep and wake-up, prefix-cache
 * resets. After every step the rows, queues and cache references must agree (Engine.audit), every request must end
 * as it should (its own finish, our abort, or a retriable refusal), greedy and seeded requests must give the tokens
 * they give alone on the same weights, and at the end nothing is held.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Engine, type EngineOptions, type SubmittedRequest } from "../../src/engine/engine.ts";
import { EngineControl, EngineUnavailableError, type RefitMode } from "../../src/engine/control.ts";
import type { ModelRunner } from "../../src/engine/model-runner.ts";
import { Rng } from "../../src/engine/rng.ts";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import type { TokenEvent } from "../../src/engine/sequence.ts";
import { backendFor } from "../../src/model/ort/backends.ts";
import { buildModel, isBuiltModel } from "../../src/model/builder/build.ts";
import { engineRowCapacity } from "../../src/model/runners/engine-kv.ts";
import { openWeights, type ServedWeights } from "../../src/model/weights.ts";
import { testCacheDir, tinyModelDir } from "../support/served.ts";

const SLOW = { timeout: 600_000 };
const MAX_LEN = 256;
const MAX_SEQS = 8;
const EOS = [151645, 151643];
/** Actions per run; each run is one seed. */
const ACTIONS = Number(process.env.BOOKKEEPING_ACTIONS ?? 260);
const SEEDS = (process.env.BOOKKEEPING_SEEDS ?? "1").split(",").map(Number);

/** One request as the test drove it. */
interface Tracked {
  req: SubmittedRequest;
  prompt: number[];
  params: ReturnType<typeof SamplingParams.parse>;
  sampleIndex: number;
  /** Deterministic on given weights: greedy, or seeded. */
  reproducible: boolean;
  abortedByUs: boolean;
  /** The policy version once the last weight update before its submission had returned. */
  minVersion: number;
  events: TokenEvent[];
  outcome: Promise<"finished" | "aborted" | "refused">;
}

async function tinySeed1Dir(): Promise<string> {
  const dir = path.join(testCacheDir(), "models", "tiny-seed1");
  if (!isBuiltModel(dir, { preset: "tiny", seed: 1 })) await buildModel({ preset: "tiny", out: dir, seed: 1 });
  return dir;
}

describe("engine bookkeeping under random interleavings", () => {
  let dirs: string[];
  let served: ServedWeights;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-bookkeeping-"));
  before(async () => {
    dirs = [await tinyModelDir(), await tinySeed1Dir()];
    const backend = await backendFor("cpu");
    served = { dir: dirs[0], dtype: "fp32", backend, maxRows: MAX_SEQS + 1, maxLength: MAX_LEN, scratchDir: scratch };
  });
  after(() => fs.rmSync(scratch, { recursive: true, force: true }));

  const newEngine = (runner: ModelRunner, maxNumSeqs: number, onStep?: () => void, onStepError?: EngineOptions["onStepError"]) =>
    new Engine(runner, {
      maxModelLen: MAX_LEN,
      maxNumSeqs,
      maxNumBatchedTokens: 40,
      // Six rows of 128 tokens: eight long sequences do not fit, so the scheduler preempts.
      kvCacheBytes: 6 * 128 * runner.floatsPerToken * 4,
      eosTokenIds: EOS,
      rowCapacity: (n) => engineRowCapacity(Math.max(1, n), MAX_LEN),
      onStep,
      onStepError,
    });

  // A fault this test cannot cause for real: the runner's step is wrapped to throw (the model itself stays real).
  test("a step that throws puts its sequences back in the queue: they finish with the tokens they give without it", SLOW, async () => {
    const runner = await openWeights(dirs[0], served);
    const params = SamplingParams.parse({ temperature: 0, max_tokens: 12, ignore_eos: true, logprobs: 1 });
    const prompts = [5, 40, 90].map((n, k) => Array.from({ length: n }, (_, i) => 2500 + k * 300 + i));
    const run = async (engine: Engine) =>
      await Promise.all(prompts.map(async (p) => {
        const ids: number[] = [];
        for await (const e of engine.submit(p, params).events) ids.push(e.tokenId);
        return ids;
      }));
    const clean = await run(newEngine(runner, MAX_SEQS));
    const errors: [string, number, number][] = [];
    const step = runner.step.bind(runner);
    let calls = 0;
    runner.step = (inputs) => (++calls === 4 || calls === 9 ? Promise.reject(new Error("injected fault")) : step(inputs));
    const faulty = newEngine(runner, MAX_SEQS, undefined, (err, retried, failed) => errors.push([String(err), retried, failed]));
    assert.deepEqual(await run(faulty), clean);
    assert.equal(errors.length, 2);
    assert.ok(errors.every(([what, retried, failed]) => what.includes("injected fault") && retried > 0 && failed === 0));
    assert.deepEqual(faulty.audit(), []);

    // A step that keeps failing ends its sequences with the error after three tries, and the engine goes on.
    runner.step = () => Promise.reject(new Error("always failing"));
    const failing = newEngine(runner, MAX_SEQS);
    await assert.rejects(run(failing), /always failing/);
    runner.step = step;
    assert.deepEqual(await run(failing), clean);
    assert.deepEqual(failing.audit(), []);
    await runner.dispose();
  });

  for (const seed of SEEDS) {
    test(`seed ${seed}: ${ACTIONS} random actions keep every invariant and lose no request`, SLOW, async () => {
      const rng = Rng.fromSeed(seed);
      const int = (n: number) => Math.floor(rng.nextUniform() * n);
      const chance = (p: number) => rng.nextUniform() < p;
      const problems: string[] = [];
      const log: string[] = [];
      let steps = 0;
      const stepWaiters: (() => void)[] = [];
      const engine = newEngine(await openWeights(dirs[0], served), MAX_SEQS, () => {
        steps++;
        for (const p of engine.audit()) problems.push(`step ${steps} after [${log.slice(-6).join("; ")}]: ${p}`);
        for (const wake of stepWaiters.splice(0)) wake();
      }, (err) => problems.push(`step ${steps + 1} failed: ${err instanceof Error ? err.message : err}`));
      const control = new EngineControl(engine, { weightsSource: dirs[0], loadWeights: (dir) => openWeights(dir, served) });
      /** Which weights each policy version ran. */
      const versionDir = new Map([[0, dirs[0]]]);
      let nextVersion = 1;
      let settledVersion = 0;
      const operations: Promise<unknown>[] = [];
      const tracked: Tracked[] = [];
      const prefixes = [0, 1, 2].map((p) => Array.from({ length: 32 }, (_, i) => 2000 + p * 500 + i * 3));

      /** Submits a random request, or `long`: a greedy one of 110 prompt tokens and 40 generated. */
      const submit = (long = false) => {
        const prompt = long
          ? Array.from({ length: 110 }, () => 3000 + int(5000))
          : chance(0.6)
          ? [...prefixes[int(3)], ...Array.from({ length: int(30) }, () => 3000 + int(5000))]
          : Array.from({ length: 1 + int(chance(0.3) ? 120 : 40) }, () => 3000 + int(5000));
        const kind = long ? 0 : int(4);
        const params = SamplingParams.parse({
          temperature: kind === 0 ? 0 : 1,
          seed: kind === 1 ? int(1000) : undefined,
          top_k: kind === 2 ? 20 : undefined,
          max_tokens: long ? 40 : 1 + int(40),
          ignore_eos: long || chance(0.7),
          logprobs: chance(0.5) ? 3 : undefined,
          prompt_logprobs: chance(0.1) ? 2 : undefined,
        });
        const n = !long && chance(0.2) ? 2 + int(3) : 1;
        for (let i = 0; i < n; i++) {
          let req: SubmittedRequest;
          try {
            req = control.submit(prompt, params, i);
          } catch (err) {
            if (!(err instanceof EngineUnavailableError)) throw err;
            return; // asleep: a retriable refusal before anything started
          }
          const t: Tracked = {
            req, prompt, params, sampleIndex: i, reproducible: kind <= 1, abortedByUs: false, minVersion: settledVersion,
            events: [], outcome: Promise.resolve("finished"),
          };
          t.outcome = (async () => {
            try {
              for await (const e of req.events) t.events.push(e);
            } catch (err) {
              if (err instanceof EngineUnavailableError && ["weights_updated", "sleeping"].includes(err.reason)) return "refused";
              problems.push(`request ${req.id} failed: ${err instanceof Error ? err.stack : err}`);
              return "refused";
            }
            return req.finishReason === "abort" ? "aborted" : "finished";
          })();
          tracked.push(t);
        }
        log.push(`submit ${prompt.length}x${n}`);
      };

      let asleep = false;
      for (let a = 0; a < ACTIONS; a++) {
        const roll = rng.nextUniform();
        if (roll < 0.4) submit();
        else if (roll < 0.5) {
          const live = tracked.filter((t) => t.req.finishReason === null && !t.abortedByUs);
          if (live.length) {
            const t = live[int(live.length)];
            t.abortedByUs = true;
            control.abort(t.req.id);
            log.push(`abort ${t.req.id}`);
          }
        } else if (roll < 0.9) {
          // Let the engine run a few steps (or a moment, when it has nothing to run). The guard is long: on a loaded
          // machine steps are slow, and a short one let aborts and refits end most requests before they could finish.
          // Requests held during a weight update count: no step runs until the new weights are in, and waiting only a
          // moment then let the actions race ahead of a slow load (3 of 81 requests finished on a loaded machine).
          const wait = 1 + int(2);
          const { running, waiting, held } = engine.stats();
          await new Promise<void>((resolve) => {
            let left = wait;
            const timer = setTimeout(resolve, running + waiting + held > 0 && !asleep ? 15_000 : 20);
            const tick = () => (--left <= 0 ? (clearTimeout(timer), resolve()) : stepWaiters.push(tick));
            stepWaiters.push(tick);
          });
        } else if (roll < 0.94) {
          const mode = (["finish", "abort", "pause"] as RefitMode[])[int(3)];
          const version = nextVersion++;
          const dir = dirs[version % 2];
          versionDir.set(version, dir);
          log.push(`refit ${mode} v${version}`);
          operations.push(control.updateWeights(dir, mode, version).then(
            () => (settledVersion = Math.max(settledVersion, version)),
            (err) => assert.match(String(err), /asleep/, "a weight update fails only while asleep"),
          ));
        } else if (roll < 0.96) {
          if (asleep) {
            log.push("wake");
            operations.push(control.wakeUp());
          } else {
            const level = (1 + int(2)) as 1 | 2;
            const mode = chance(0.7) ? "finish" : "abort";
            log.push(`sleep ${level} ${mode}`);
            operations.push(control.sleep(level, mode));
          }
          asleep = !asleep;
        } else {
          log.push("reset prefix cache");
          control.resetPrefixCache();
        }
      }
      if (asleep) operations.push(control.wakeUp());
      await Promise.all(operations);
      // Then a burst that runs undisturbed: eight long greedy requests do not fit the six rows' KV budget together,
      // so the scheduler must preempt, and they must all finish with the tokens they give alone. Timing decides how
      // much of the random phase finishes (on a loaded machine refits and aborts ended most of it), not this.
      const burst = tracked.length;
      for (let i = 0; i < 8; i++) submit(true);
      log.push("burst of 8 long requests");
      const outcomes = await Promise.all(tracked.map((t) => t.outcome));
      await engine.idle();
      for (const p of engine.audit()) problems.push(`at the end: ${p}`);
      assert.deepEqual(problems, [], problems.slice(0, 5).join("\n"));

      // Nothing held once everything ended.
      const stats = engine.stats();
      assert.deepEqual([stats.running, stats.waiting, stats.held, engine.cache.totalRefs], [0, 0, 0, 0]);

      // Every request ended as it should, and each finished one says why.
      tracked.forEach((t, i) => {
        if (t.abortedByUs) return;
        if (outcomes[i] === "finished") {
          assert.ok(["stop", "length"].includes(t.req.finishReason!), `request ${t.req.id}: ${t.req.finishReason}`);
          assert.equal(t.events.at(-1)?.finishReason, t.req.finishReason);
        }
        const versions = t.events.map((e) => e.policyVersion);
        assert.ok(versions.every((v, j) => v >= (versions[j - 1] ?? t.minVersion)), `request ${t.req.id}: versions ${versions}`);
      });
      const finished = outcomes.filter((o) => o === "finished").length;
      assert.ok(finished >= 5, `${finished} of ${tracked.length} requests finished`);
      assert.deepEqual(outcomes.slice(burst), Array(8).fill("finished"), "the burst after the random phase finished");
      assert.ok(engine.stats().preemptions > 0, "the KV budget forced preemptions");

      // Reproducible requests that ran on one version give what they give alone on those weights.
      const checks = tracked.filter((t, i) =>
        outcomes[i] === "finished" && t.reproducible && t.events.length > 0 &&
        t.events.every((e) => e.policyVersion === t.events[0].policyVersion)
      ).slice(-30); // the burst among them
      assert.ok(checks.length >= 3, `${checks.length} reproducible requests to check`);
      const byDir = new Map<string, Tracked[]>();
      for (const t of checks) {
        const dir = versionDir.get(t.events[0].policyVersion)!;
        byDir.set(dir, [...(byDir.get(dir) ?? []), t]);
      }
      for (const [dir, list] of byDir) {
        const runner = await openWeights(dir, served);
        const alone = newEngine(runner, 1);
        for (const t of list) {
          const events: TokenEvent[] = [];
          for await (const e of alone.submit(t.prompt, t.params, t.sampleIndex).events) events.push(e);
          assert.deepEqual(t.events.map((e) => e.tokenId), events.map((e) => e.tokenId), `request ${t.req.id} vs alone`);
          t.events.forEach((e, j) => assert.ok(Math.abs(e.logprob - events[j].logprob) < 1e-3, `request ${t.req.id} token ${j}`));
        }
        await runner.dispose();
      }
      await engine.runner.dispose();
    });
  }
});
