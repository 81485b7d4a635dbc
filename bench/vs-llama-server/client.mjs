// GRPO-like load against ONE OpenAI-compatible server (llama-server or gym-edge), identical requests for both.
// The GRPO-like load (prompt text: "Task i:" + WORDS pseudo-random words, chat
// completions, temperature 1, top_p 1, EOS ignored, seeded), with what a fair side-by-side needs:
//   - every request asks for logprobs of every generated token (logprobs: true, top_logprobs: 1 -- llama-server gives no
//     per-token logprob with top_logprobs 0, so 1 on both) and the client checks that each response has them;
//   - the same sampling on both: top_k 0 and min_p 0 sent explicitly (llama-server's defaults are top_k 40, min_p 0.05;
//     gym-edge's are off), i.e. plain temperature-1 sampling over the whole vocabulary on both;
//   - generated tokens are counted from usage.completion_tokens (n=1) and cross-checked against the logprobs' length
//     (for n>1 from the logprobs, see account());
//   - MODE split: N separate n=1 requests per prompt (32 sequences, 32 prompt prefills); llama-server gets
//     cache_prompt: false (always), gym-edge must run with --no-prefix-caching, so neither reuses a prefix computed by
//     another request. MODE n: one request with n=N per prompt; both servers prefill each prompt once and fork it to
//     the N samples (llama-server's n_cmpl child slots, gym-edge's shared-prefill wait + prefix cache);
//   - each round uses prompts no earlier round used (no cross-round prompt caching); one untimed warm-up round first;
//   - an equivalence probe first: one greedy request (temperature 0, raw logprobs) whose tokens and log-probabilities
//     are compared between the servers by summary.mjs.
// Uses node:http (no fetch header timeout), no dependencies.
//
// usage: node client.mjs --url http://127.0.0.1:PORT --label NAME --out FILE.json [--server llama-server|gym-edge]
//          [--runtime C++|node|deno|bun] [--dtype fp32|q8|q4] [--mode split|n] [--runs 3] [--warmup 1] [--prompts 8]
//          [--n 4] [--max-tokens 64] [--words 110] [--first-round 1] [--append]
// --first-round R numbers the timed rounds from R (round r's prompts and seeds are the same on every server);
// --append adds the rounds to those already in FILE.json (its probe kept, no new probe), so a script can interleave
// single rounds of several servers: `--runs 0` for the probe and warm-ups, then `--runs 1 --warmup 0 --first-round r
// --append` per round.
import * as http from "node:http";
import * as fs from "node:fs";
import * as os from "node:os";

const argv = process.argv.slice(2);
const opt = (name, def) => {
  const i = argv.indexOf("--" + name);
  return i >= 0 ? argv[i + 1] : def;
};
const base = opt("url", "http://127.0.0.1:8000").replace(/\/$/, "");
const label = opt("label", base);
const server = opt("server", label), runtime = opt("runtime", ""), dtype = opt("dtype", "fp32");
const out = opt("out", "");
const mode = opt("mode", "split");
const runs = Number(opt("runs", 3)), warmups = Number(opt("warmup", 1));
const firstRound = Number(opt("first-round", 1)), append = argv.includes("--append");
const prompts = Number(opt("prompts", 8)), n = Number(opt("n", 4));
const maxTokens = Number(opt("max-tokens", 64)), nWords = Number(opt("words", 110));
if (!["split", "n"].includes(mode)) throw new Error("--mode split|n");

const words = "alpha beta gamma delta river mountain code server token policy reward agent tool answer question".split(
  " ",
);
function prompt(i) {
  let s = `Task ${i}:`;
  let x = i * 7919 + 1;
  for (let k = 0; k < nWords; k++) {
    x = (x * 48271) % 2147483647;
    s += " " + words[x % words.length];
  }
  return s;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
function post(path, body) {
  const data = Buffer.from(JSON.stringify(body));
  const u = new URL(base + path);
  return new Promise((resolve, reject) => {
    const req = http.request({
      hostname: u.hostname,
      port: u.port,
      path: u.pathname,
      method: "POST",
      agent,
      headers: { "content-type": "application/json", "content-length": data.length },
    }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = { raw: text.slice(0, 300) };
        }
        if (res.statusCode !== 200) reject(new Error(`${label}: status ${res.statusCode}: ${text.slice(0, 300)}`));
        else resolve(json);
      });
    });
    req.on("error", reject);
    req.end(data);
  });
}

// identical body for both servers; fields one of them does not know are ignored by it
// (gym-edge ignores cache_prompt; llama-server ignores logprobs_mode)
function body(i, nn, seed, extra = {}) {
  return {
    messages: [{ role: "user", content: prompt(i) }],
    n: nn,
    max_tokens: maxTokens,
    stream: false,
    temperature: 1,
    top_p: 1,
    top_k: 0,
    min_p: 0,
    ignore_eos: true,
    seed,
    logprobs: true,
    top_logprobs: 1,
    cache_prompt: false,
    ...extra,
  };
}

/**
 * Per-response accounting.
 * Generated tokens: usage.completion_tokens for n=1 requests (both servers). For n>1, llama-server merges the n
 * results into one response but keeps only the first result's usage (choice 0's count), so per choice: max_tokens when
 * finish_reason is "length" (ignore_eos, no stop strings: exactly max_tokens were generated), else its logprob entries.
 * usage is recorded as well (gym-edge's covers all choices).
 * Logprobs: one entry per generated token is expected. llama-server computes the logprob of every token but leaves out
 * of `logprobs.content` a token whose text ends inside a UTF-8 character (server-context.cpp process_token: add_token
 * only when the text so far is valid UTF-8), frequent with random weights (byte-fallback tokens). Coverage is reported,
 * not failed on.
 */
function account(j, nn) {
  const ch = j.choices ?? [];
  const usageCt = j.usage?.completion_tokens ?? NaN;
  const perChoice = ch.map((c) => {
    const content = c.logprobs?.content ?? [];
    const withTop = content.filter((e) =>
      Number.isFinite(e.logprob) && Array.isArray(e.top_logprobs) && e.top_logprobs.length >= 1
    ).length;
    const gen = nn === 1 ? usageCt : c.finish_reason === "length" ? maxTokens : content.length;
    return { gen, lp: content.length, withTop, finish: c.finish_reason };
  });
  const sum = (k) => perChoice.reduce((a, c) => a + c[k], 0);
  return {
    completion_tokens: sum("gen"),
    usage_completion_tokens: usageCt,
    prompt_tokens: j.usage?.prompt_tokens ?? NaN,
    choices: ch.length,
    logprob_tokens: sum("lp"),
    logprob_tokens_with_top: sum("withTop"),
    choices_with_full_logprobs: perChoice.filter((c) => c.lp === c.gen && c.withTop === c.lp).length,
    choices_with_logprobs: perChoice.filter((c) => c.lp > 0 && c.withTop === c.lp).length,
    choices_exact_tokens: perChoice.filter((c) => c.gen === maxTokens).length,
    finish: perChoice.map((c) => c.finish),
  };
}

async function round(r, timed) {
  // round r uses its own prompt indices: 100*r + i for timed rounds (r >= 1), 90000 + i for warm-ups
  const idx = (i) => (timed ? 100 * r : 90000 + 100 * r) + i;
  const reqs = [];
  for (let i = 0; i < prompts; i++) {
    if (mode === "n") reqs.push({ b: body(idx(i), n, 1000 * r + 10 * i), nn: n });
    else for (let k = 0; k < n; k++) reqs.push({ b: body(idx(i), 1, 1000 * r + 10 * i + k), nn: 1 });
  }
  const t0 = performance.now();
  const lat = [];
  const res = await Promise.all(reqs.map(async (q) => {
    const s = performance.now();
    const j = await post("/v1/chat/completions", q.b);
    lat.push(performance.now() - s);
    return { ...account(j, q.nn), prompt_index: q.b.messages[0].content.split(":")[0], seed: q.b.seed };
  }));
  const wall = (performance.now() - t0) / 1000;
  const sum = (k) => res.reduce((a, x) => a + x[k], 0);
  const seqs = sum("choices");
  const rec = {
    what: timed ? "run" : "warmup",
    round: r,
    mode,
    requests: reqs.length,
    sequences: seqs,
    expected_sequences: prompts * n,
    completion_tokens: sum("completion_tokens"),
    expected_tokens: prompts * n * maxTokens,
    prompt_tokens: sum("prompt_tokens"),
    usage_completion_tokens: sum("usage_completion_tokens"),
    sequences_with_exactly_max_tokens: sum("choices_exact_tokens"),
    logprob_tokens: sum("logprob_tokens"),
    logprob_tokens_with_top: sum("logprob_tokens_with_top"),
    logprob_coverage: +(sum("logprob_tokens") / sum("completion_tokens")).toFixed(4),
    sequences_with_full_logprobs: sum("choices_with_full_logprobs"),
    sequences_with_logprobs: sum("choices_with_logprobs"),
    finish_reasons: [...new Set(res.flatMap((x) => x.finish))],
    wall_s: +wall.toFixed(3),
    gen_tok_per_s: +(sum("completion_tokens") / wall).toFixed(2),
    latency_s: { min: +(Math.min(...lat) / 1000).toFixed(2), max: +(Math.max(...lat) / 1000).toFixed(2) },
    loadavg_1m_after: +os.loadavg()[0].toFixed(2),
    // per request: [prompt, seed, generated tokens, logprob entries, finish reasons]
    per_request: res.map((x) => [x.prompt_index, x.seed, x.completion_tokens, x.logprob_tokens, x.finish.join(",")]),
  };
  // ok: every sequence there, exactly max_tokens each, and logprobs (with a top-1 alternative) on every sequence
  rec.ok = rec.sequences === rec.expected_sequences && rec.completion_tokens === rec.expected_tokens &&
    rec.sequences_with_exactly_max_tokens === rec.sequences && rec.sequences_with_logprobs === rec.sequences;
  return rec;
}

async function probe() {
  // greedy: the same token ids on both servers if the weights and the prompt tokens are the same; the raw log-softmax
  const j = await post("/v1/chat/completions", {
    messages: [{ role: "user", content: prompt(7) }],
    max_tokens: 8,
    temperature: 0,
    top_k: 0,
    min_p: 0,
    top_p: 1,
    ignore_eos: true,
    seed: 0,
    logprobs: true,
    top_logprobs: 1,
    logprobs_mode: "raw",
    cache_prompt: false,
  });
  const content = j.choices?.[0]?.logprobs?.content ?? [];
  return {
    prompt_tokens: j.usage?.prompt_tokens,
    completion_tokens: j.usage?.completion_tokens,
    tokens: content.map((e) => e.token),
    bytes: content.map((e) => (e.bytes ?? []).join(",")),
    logprobs: content.map((e) => e.logprob),
    top1_logprobs: content.map((e) => e.top_logprobs?.[0]?.logprob ?? null),
  };
}

const earlier = append && out && fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, "utf8")) : null;
const result = earlier ?? {
  label,
  server,
  runtime,
  dtype,
  url: base,
  mode,
  prompts,
  n,
  max_tokens: maxTokens,
  words: nWords,
  runs: [],
  warmups: [],
  started: new Date().toISOString(),
};
// stdout: JSON lines; stderr: one short line per round
const say = (x) =>
  console.error(
    `    ${label} ${mode} ${x.what} ${x.round}: ${x.wall_s} s, ${x.completion_tokens} gen tok (${x.prompt_tokens} prompt tok), ` +
      `${x.gen_tok_per_s} tok/s, logprob entries ${x.logprob_tokens}/${x.completion_tokens} tok (every token: ${x.sequences_with_full_logprobs}/${x.sequences} seqs)${
        x.ok ? "" : "  CHECK FAILED"
      }`,
  );
if (!earlier) {
  result.probe = await probe();
  console.log(JSON.stringify({ label, probe: result.probe }));
  console.error(
    `    ${label} probe: prompt ${result.probe.prompt_tokens} tok, greedy ${
      JSON.stringify(result.probe.tokens.join(""))
    }, logprobs ${result.probe.logprobs.map((v) => v.toFixed(4)).join(" ")}`,
  );
}
for (let w = 0; w < warmups; w++) {
  const r = await round(w + 1, false);
  result.warmups.push(r);
  console.log(JSON.stringify({ label, ...r }));
  say(r);
}
for (let r = firstRound; r < firstRound + runs; r++) {
  const x = await round(r, true);
  result.runs.push(x);
  console.log(JSON.stringify({ label, ...x }));
  say(x);
}
const rates = result.runs.map((x) => x.gen_tok_per_s).sort((a, b) => a - b);
result.median_gen_tok_per_s = rates.length
  ? (rates.length % 2 ? rates[rates.length >> 1] : (rates[rates.length / 2 - 1] + rates[rates.length / 2]) / 2)
  : null;
result.all_ok = result.runs.every((x) => x.ok) && result.warmups.every((x) => x.ok);
if (out) fs.writeFileSync(out, JSON.stringify(result, null, 1));
console.log(
  JSON.stringify({
    label,
    mode,
    median_gen_tok_per_s: result.median_gen_tok_per_s,
    runs: rates,
    all_ok: result.all_ok,
  }),
);
console.error(
  `    ${label} ${mode}: median ${result.median_gen_tok_per_s} tok/s${result.all_ok ? "" : "  CHECK FAILED"}`,
);
agent.destroy();
process.exit(result.all_ok ? 0 : 2);
