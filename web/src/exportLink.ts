// The usage export the Usage page offers: the period and filters the page shows, turned into the
// export route's query. Pure (the clock is passed in), so vitest checks it.

/** The periods of the Usage page, in seconds (the same spans `/usage/stats?period=` uses). */
export const PERIOD_SECONDS: Record<string, number> = {
  "1h": 3600,
  "1d": 86_400,
  "7d": 7 * 86_400,
  "30d": 30 * 86_400,
  "90d": 90 * 86_400,
};

export interface ExportSelection {
  format: "csv" | "json";
  /** One of PERIOD_SECONDS' keys. */
  period: string;
  /** The instance filter ("" for every instance). */
  instance: string;
  /** The end of the period: the moment the user asked for the export. */
  now: Date;
}

/**
 * The query of `/api/v1/usage/export` for what the page shows: the selected period ending now,
 * as explicit `start_date` / `end_date` (the server's own default is the last 30 days), and the
 * instance filter when one is set. Throws on an unknown period rather than exporting something
 * else than what is shown.
 */
export function exportQuery(selection: ExportSelection): string {
  const seconds = PERIOD_SECONDS[selection.period];
  if (seconds === undefined) throw new Error(`unknown period ${selection.period}`);
  const end = selection.now.getTime();
  const params = new URLSearchParams({
    format: selection.format,
    start_date: new Date(end - seconds * 1000).toISOString(),
    end_date: new Date(end).toISOString(),
  });
  if (selection.instance) params.set("instance", selection.instance);
  return params.toString();
}
