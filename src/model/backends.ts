/** Old path of ort/backends.ts, kept until the last importer moves to the new one; remove after. */
export * from "./ort/backends.ts";
