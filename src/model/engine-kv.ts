/** Old path of runners/engine-kv.ts, kept until the last importer moves to the new one; remove after. */
export * from "./runners/engine-kv.ts";
