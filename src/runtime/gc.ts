/**
 * One full garbage collection, for the end of loading. Loading leaves garbage that the JavaScript engine keeps
 * resident until its heap next grows, which serving rarely makes it do: on the model thread, tokenizer.json parsed
 * into objects (a 90 MB heap holding 8 MB alive, for Qwen's 151,643-token vocabulary), and on the serving thread what
 * building the tokenizer from its parts left. Node's resident memory once ready went from 1,233-1,239 MB to
 * 1,133-1,189 (bench-135m); Deno's and Bun's barely moved. Bun collects on request; Node and Deno let V8's gc() be
 * reached once its flag is set, from a new context.
 */
import v8 from "node:v8";
import vm from "node:vm";

/** Collects garbage now; false where the runtime refuses (nothing else changes then). */
export function collectGarbage(): boolean {
  try {
    const bun = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun;
    if (bun) {
      bun.gc(true);
      return true;
    }
    v8.setFlagsFromString("--expose-gc");
    (vm.runInNewContext("gc") as () => void)();
    return true;
  } catch {
    return false;
  }
}
