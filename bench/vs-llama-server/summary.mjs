// Prints the side-by-side table from one results directory: client_*.json (client.mjs), servers.jsonl (memory and
// load averages per server start and per load, side-by-side.sh), quality.jsonl (mean KL divergence from fp32).
// usage: node summary.mjs RESULTS_DIR [--md FILE]
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";

const dir = process.argv[2];
const mdIdx = process.argv.indexOf("--md");
const jsonl = (name) => {
  const file = path.join(dir, name);
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
};
const rows = fs.readdirSync(dir).filter((f) => /^client_.*\.json$/.test(f)).sort()
  .map((f) => ({ file: f, dtype: "fp32", ...JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")) }));
const records = jsonl("servers.jsonl");
const quality = jsonl("quality.jsonl");
const tsv = path.join(dir, "servers.tsv");
const commands = fs.existsSync(tsv) ? fs.readFileSync(tsv, "utf8").trim().split("\n").map((l) => l.split("\t")) : [];
const lines = [];
const p = (s = "") => {
  lines.push(s);
  console.log(s);
};

const DTYPE_ORDER = ["fp32", "fp16", "q8", "q4"];
const RUNTIME_ORDER = ["C++", "node", "deno", "bun"];
const rank = (list, v) => (list.includes(v) ? list.indexOf(v) : list.length);
const isLlama = (r) => r.server === "llama-server" || r.label.startsWith("llama-server");
const modes = [...new Set(rows.map((r) => r.mode))].sort().reverse(); // split first
const dtypes = [...new Set([...rows.map((r) => r.dtype), ...quality.map((q) => q.dtype)])]
  .sort((a, b) => rank(DTYPE_ORDER, a) - rank(DTYPE_ORDER, b));
/** One line per server and dtype: llama-server first, then gym-edge's runtimes. */
const servers = [...new Map(rows.map((r) => [r.label, r])).values()].sort((a, b) =>
  rank(dtypes, a.dtype) - rank(dtypes, b.dtype) || isLlama(b) - isLlama(a) ||
  rank(RUNTIME_ORDER, a.runtime) - rank(RUNTIME_ORDER, b.runtime) || a.label.localeCompare(b.label)
);
const find = (label, mode) => rows.find((x) => x.label === label && x.mode === mode);
const reference = (dtype, mode) => rows.find((x) => isLlama(x) && x.dtype === dtype && x.mode === mode);
const tokS = (
  r,
) => (r?.median_gen_tok_per_s == null ? "-" : r.median_gen_tok_per_s.toFixed(1) + (r.all_ok ? "" : " (check failed)"));
const ratio = (
  r,
  ref,
) => (r && ref?.median_gen_tok_per_s ? (r.median_gen_tok_per_s / ref.median_gen_tok_per_s).toFixed(2) + "x" : "-");
const max = (xs) => (xs.length ? Math.max(...xs) : null);
const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length ? (v.length % 2 ? v[v.length >> 1] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2) : null;
};
/**
 * Median over rounds of the ratio to llama-server's round of the same number: with the servers' rounds taken in
 * turn (side-by-side.sh's INTERLEAVE=1), each such pair ran minutes apart at most, so a machine whose speed drifts
 * moves both.
 */
const pairedRatio = (r, ref) => {
  if (!r || !ref || r === ref) return "-";
  const byRound = new Map(ref.runs.map((x) => [x.round, x.gen_tok_per_s]));
  const ratios = r.runs.filter((x) => byRound.get(x.round)).map((x) => x.gen_tok_per_s / byRound.get(x.round));
  return ratios.length ? median(ratios).toFixed(2) + "x" : "-";
};

/** RSS once ready / largest RSS sampled during the loads (VmHWM: the peak since start, loading included). */
function memory(label, mode) {
  const loads = records.filter((x) => x.what === "load" && x.label === label && (!mode || x.mode === mode));
  const ready = max(loads.map((x) => x.rss_ready_mb));
  if (ready == null) return "-";
  return `${ready} / ${max(loads.map((x) => x.rss_load_peak_mb))} (hwm ${max(loads.map((x) => x.rss_hwm_mb))})`;
}

function meanKl(server, dtype) {
  if (dtype === "fp32") return "0 (reference)";
  const q = quality.filter((x) => x.server === server && x.dtype === dtype).pop();
  if (!q) return "-";
  if (q.mean_kl == null) return `- (${q.note ?? "no figure"})`;
  return q.mean_kl.toPrecision(3) + (q.mean_kl_se ? ` ± ${q.mean_kl_se.toPrecision(2)}` : "");
}

if (rows.length) {
  p(
    "| server | runtime | dtype | " + modes.map((m) => `${m} tok/s | ${m} ratio`).join(" | ") +
      " | RSS MB ready / load peak (VmHWM) | mean KL from fp32 |",
  );
  p("|---|---|---|" + modes.map(() => "---|---|").join("") + "---|---|");
  for (const s of servers) {
    const cells = modes.map((m) => `${tokS(find(s.label, m))} | ${ratio(find(s.label, m), reference(s.dtype, m))}`);
    const server = isLlama(s) ? "llama-server" : "gym-edge";
    p(`| ${server} | ${s.runtime || "-"} | ${s.dtype} | ${cells.join(" | ")} | ${memory(s.label)} | ${
      meanKl(server, s.dtype)
    } |`);
  }
  p();
  p(
    "ratio: to llama-server serving the same dtype. Memory: VmRSS of the server's process tree after /health answered, " +
      "the largest sampled during the loads, and VmHWM (the peak since start, loading included).",
  );
  p();
}

for (const mode of modes) {
  const order = (r) => servers.findIndex((s) => s.label === r.label);
  const rs = rows.filter((r) => r.mode === mode).sort((a, b) => order(a) - order(b));
  const r0 = rs[0];
  const what = mode === "split"
    ? `${r0.prompts * r0.n} separate n=1 requests, no prefix reuse on either server`
    : `${r0.prompts} requests with n=${r0.n}, each prompt prefilled once and forked`;
  p(
    `### mode ${mode}: ${r0.prompts} prompts x n=${r0.n} (${what}), ${r0.max_tokens} new tokens each, temperature 1, ` +
      `logprobs + top_logprobs 1; ${r0.runs.length} timed round(s) after ${r0.warmups.length} warm-up`,
  );
  p();
  p(
    "| server | dtype | runs: generated tok/s | median tok/s | ratio | wall s (median run) | prompt tok / round | gen tok / round | " +
      "logprob entries / gen tok (seqs with one for every token) | RSS MB ready / load peak (VmHWM) | probe vs llama-server | " +
      "paired ratio (median over rounds of the ratio to llama-server's round) |",
  );
  p("|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of rs) {
    const ref = reference(r.dtype, mode);
    const walls = r.runs.map((x) => x.wall_s).sort((a, b) => a - b);
    let probe = "-";
    if (r === ref) probe = "(reference)";
    else if (ref?.probe && r.probe) {
      const a = r.probe, b = ref.probe;
      const same = a.tokens.length === b.tokens.length && a.tokens.every((t, i) => t === b.tokens[i]);
      const k = Math.min(a.logprobs.length, b.logprobs.length);
      let d = 0;
      for (let i = 0; i < k; i++) d = Math.max(d, Math.abs(a.logprobs[i] - b.logprobs[i]));
      probe = `greedy ${same ? "same" : "DIFFERENT"} ${k} tok, max abs dlogprob ${
        d.toExponential(1)
      }, prompt tok ${a.prompt_tokens}/${b.prompt_tokens}`;
    }
    const last = r.runs[r.runs.length - 1] ?? r.warmups[0];
    const lp = r.runs.map((x) =>
      `${x.logprob_tokens}/${x.completion_tokens} (${x.sequences_with_full_logprobs}/${x.sequences})`
    ).join(", ");
    p(
      `| ${r.label} | ${r.dtype} | ${r.runs.map((x) => x.gen_tok_per_s.toFixed(1)).join(" / ")} | **${tokS(r)}** | ${
        ratio(r, ref)
      } | ` +
        `${walls.length ? walls[walls.length >> 1].toFixed(2) : "-"} | ${last?.prompt_tokens ?? "-"} | ${
          last?.completion_tokens ?? "-"
        } | ` +
        `${lp}${r.all_ok ? "" : " (CHECK FAILED)"} | ${memory(r.label, mode)} | ${probe} | ${pairedRatio(r, ref)} |`,
    );
  }
  p();
}

if (quality.length) {
  p("### quality: mean KL divergence of next-token distributions from the fp32 model");
  p();
  p("| server | dtype | mean KL | tool | chunks x ctx | notes |");
  p("|---|---|---|---|---|---|");
  for (const d of dtypes) {
    for (const q of quality.filter((x) => x.dtype === d)) {
      const notes = [
        q.note,
        q.ppl != null ? `ppl ${q.ppl.toFixed(2)} vs fp32 ${q.ppl_fp32?.toFixed(2)}` : "",
        q.same_top_pct != null ? `same top token ${q.same_top_pct}%` : "",
        q.top1_agreement != null ? `same top token ${(100 * q.top1_agreement).toFixed(1)}%` : "",
        q.p99_kl != null ? `p99 KL ${q.p99_kl.toPrecision(3)}` : "",
        q.positions != null ? `${q.positions} positions` : "",
      ].filter(Boolean).join("; ");
      p(`| ${q.server} | ${d} | ${meanKl(q.server, d)} | ${q.tool ?? "-"} | ${q.chunks ?? q.chunks_asked ?? "-"} x ${
        q.ctx ?? "-"
      } | ${notes || "-"} |`);
    }
  }
  p();
}

const starts = records.filter((x) => x.what === "server");
if (starts.length) {
  p(
    "Load average (1, 5, 15 min) at each server's start and end: " +
      starts.map((x) => `${x.label}: ${x.loadavg_start} -> ${x.loadavg_end}`).join("; "),
  );
  p();
}
if (commands.length) {
  p("Server command lines:");
  for (const [k, v] of commands) p(`- ${k}: \`${v}\``);
}
const bad = rows.filter((r) => !r.all_ok).map((r) => r.label + "/" + r.mode);
if (bad.length) p(`CHECKS FAILED (token counts or logprobs): ${bad.join(", ")}`);
p(
  'Notes: generated tokens = usage.completion_tokens (n=1); for n>1 max_tokens per choice finishing with "length" ' +
    "(llama-server keeps only choice 0 in usage). llama-server computes a logprob for every token but omits from " +
    "logprobs.content the tokens whose text ends inside a UTF-8 character. probe = one greedy request (temperature 0, " +
    "raw logprobs) on each server: for fp32 the same tokens and log-probabilities within float rounding mean the same " +
    "weights and prompt tokens; for q8 / q4 the two sides quantize differently, so it only shows how far apart they are.",
);
if (mdIdx > 0) fs.writeFileSync(process.argv[mdIdx + 1], lines.join("\n") + "\n");
