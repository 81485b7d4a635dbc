/**
 * Progress of hub downloads, kept apart from model-source.ts: the backends report transformers.js's downloads
 * through it, and importing model-source.ts would load transformers.js into the model thread, which has no use for it.
 */
import { Progress } from "../../progress.ts";

/** Files at least this big say when their download is done. */
export const REPORTED_DOWNLOAD = 16 * 2 ** 20;

/** What transformers.js tells a `progress_callback` of the files it downloads. */
interface HubProgressInfo {
  status: string;
  file?: string;
  loaded?: number;
  total?: number;
}

/**
 * A `progress_callback` for transformers.js's downloads that reports files of 16 MiB and more to `log` as
 * writeDownload does (lines every few seconds, then done); smaller ones and files read from the cache stay quiet.
 */
export function hubDownloadProgress(log: (message: string) => void): (info: HubProgressInfo) => void {
  const files = new Map<string, Progress>();
  return (info) => {
    if (!info.file) return;
    if (info.status === "progress" && (info.total ?? 0) >= REPORTED_DOWNLOAD) {
      let progress = files.get(info.file);
      if (!progress) files.set(info.file, progress = new Progress(`downloading ${info.file}`, info.total!, "bytes", { log, bar: false }));
      progress.set(info.loaded ?? 0);
    } else if (info.status === "done") {
      files.get(info.file)?.finish();
      files.delete(info.file);
    }
  };
}
