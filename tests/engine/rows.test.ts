/**
 * The row table over a real engine runner (the tiny model): gathering the decoding sequences into rows [0, n)
 * works from every layout the engine can reach, and each sequence's KV travels with it.
 */
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { RowTable } from "../../src/engine/rows.ts";
import { Sequence } from "../../src/engine/sequence.ts";
import { backendFor } from "../../src/model/ort/backends.ts";
import { openEngineRunner } from "../../src/model/runners/engine-runner.ts";
import type { ModelRunner } from "../../src/engine/model-runner.ts";
import { tinyModelDir } from "../support/served.ts";

const SLOW = { timeout: 120_000 };

/** A sequence of `n` tokens whose KV is computed into its row. */
async function seated(runner: ModelRunner, table: RowTable, n: number, salt: number): Promise<Sequence> {
  const seq = new Sequence(Array.from({ length: n }, (_, i) => 1000 + salt * 37 + i));
  seq.status = "running";
  table.assign(seq);
  await runner.step([{ row: seq.row!, tokens: seq.tokens, start: 0 }]);
  seq.numComputed = n;
  return seq;
}

function kvOf(runner: ModelRunner, seq: Sequence): Float32Array {
  const out = new Float32Array(seq.numComputed * runner.floatsPerToken);
  runner.readKv(seq.row!, 0, seq.numComputed, out);
  return out;
}

describe("row table", () => {
  let runner: ModelRunner;
  before(async () => {
    runner = await openEngineRunner({ dir: await tinyModelDir(), backend: await backendFor("cpu"), maxRows: 4, maxLength: 256 });
  });

  test("gather moves decoders into free low rows before pushing a prefilling sequence out of the way", SLOW, async () => {
    // Capacity 4 for at most 3 running. Rows: [prefilling P, free (a finished request's), decoder A, decoder B].
    const table = new RowTable(runner, 4);
    const p = await seated(runner, table, 9, 4); // row 0
    const gone = await seated(runner, table, 3, 3); // row 1
    const a = await seated(runner, table, 5, 1); // row 2
    const b = await seated(runner, table, 7, 2); // row 3
    assert.deepEqual([p, gone, a, b].map((s) => s.row), [0, 1, 2, 3]);
    table.release(gone);
    const before = new Map([a, b, p].map((seq) => [seq, kvOf(runner, seq)]));
    // This layout made the old gather push P out first, with no free row above the decoders left for it.
    const ordered = table.gather([a, b]);
    assert.deepEqual(ordered, [a, b].sort((x, y) => x.row! - y.row!));
    assert.ok(a.row! < 2 && b.row! < 2, `decoders in rows ${a.row}, ${b.row}`);
    assert.ok(p.row! >= 2, `the prefilling sequence moved above them (row ${p.row})`);
    for (const [seq, kv] of before) assert.deepEqual(kvOf(runner, seq), kv, `sequence ${seq.id}'s KV moved with it`);
    assert.deepEqual(table.occupants.filter(Boolean).length, 3);
  });

  test("gather from every layout of three sequences in four rows keeps each sequence's KV", SLOW, async () => {
    // Every way to place up to 3 sequences (each decoding or prefilling) in 4 rows.
    let layouts = 0;
    for (let mask = 0; mask < 4 ** 4; mask++) {
      const kinds = [0, 1, 2, 3].map((r) => (mask >> (2 * r)) & 3); // 0 free, 1 decoding, 2 prefilling, 3 skip
      if (kinds.includes(3) || kinds.filter((k) => k !== 0).length > 3) continue;
      layouts++;
      const table = new RowTable(runner, 4);
      const placed: { seq: Sequence; decoding: boolean }[] = [];
      // Fill all rows, then free the ones meant to be free: into an empty table, the r-th sequence lands in row r.
      const fillers: Sequence[] = [];
      for (let r = 0; r < 4; r++) {
        const seq = await seated(runner, table, 2 + r, r + 10 * layouts);
        assert.equal(seq.row, r);
        if (kinds[r] === 0) fillers.push(seq);
        else placed.push({ seq, decoding: kinds[r] === 1 });
      }
      for (const seq of fillers) table.release(seq);
      const decoding = placed.filter((x) => x.decoding).map((x) => x.seq);
      const before = new Map(placed.map(({ seq }) => [seq, kvOf(runner, seq)]));
      const ordered = table.gather(decoding);
      assert.equal(ordered.length, decoding.length);
      ordered.forEach((seq, r) => assert.equal(seq.row, r, `layout ${kinds}: decoder in row ${r}`));
      for (const [seq, kv] of before) assert.deepEqual(kvOf(runner, seq), kv, `layout ${kinds}: KV of sequence ${seq.id}`);
    }
    assert.ok(layouts > 50, `${layouts} layouts`);
  });

  test("a new sequence takes a row no higher than the count of sequences, so the rows in use follow that count", SLOW, async () => {
    const table = new RowTable(runner, 4);
    const a = await seated(runner, table, 3, 1);
    const b = await seated(runner, table, 3, 2);
    assert.deepEqual([a.row, b.row], [0, 1]);
    table.release(a);
    // One sequence runs: the newcomer takes row 0 (the highest free of the first two), not row 3.
    const c = await seated(runner, table, 3, 3);
    assert.equal(c.row, 0);
    const d = await seated(runner, table, 3, 4);
    assert.equal(d.row, 2, "with two running, the third goes just above them");
  });
});
