// The link to the other instances (cluster.redis_url, docs/multi-instance.md) as the Overview's
// Cluster card shows it, from the `cluster` field of GET /api/v1/status or of the live stream's
// `status` event (null without a link: no card). Pure, so it is unit tested.

/** What the card shows. */
export type ClusterView = {
  /** The backend's display name: "Redis". */
  backend: string;
  /** Password already masked by the server. */
  address: string;
  /** connected, or local fallback: the instance routes on its own state. */
  state: "connected" | "fallback";
  /** RFC 3339: since when `state` holds; null when unknown. */
  since: string | null;
  lastError: string | null;
  fallbacks: number;
  reconnects: number;
  published: number;
  applied: number;
  dropped: number;
};

/** Milliseconds of a status answer's `timestamp`, or -Infinity when it has none. */
function takenAt(status: any): number {
  const at = Date.parse(String(status?.timestamp ?? ""));
  return Number.isNaN(at) ? -Infinity : at;
}

/** Of several /status objects (the fetched one, the stream's latest), the newest one present. */
export function newestStatus(...statuses: unknown[]): any {
  let newest: any = null;
  for (const status of statuses) {
    if (!status || typeof status !== "object") continue;
    if (newest === null || takenAt(status) > takenAt(newest)) newest = status;
  }
  return newest;
}

function count(value: unknown): number {
  const n = Number(value);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/** The card's content from the newest of `statuses`; null when it has no link (no card). */
export function clusterView(...statuses: unknown[]): ClusterView | null {
  const cluster = newestStatus(...statuses)?.cluster;
  if (!cluster || typeof cluster !== "object") return null;
  const backend = String(cluster.backend || "cluster");
  return {
    backend: backend.charAt(0).toUpperCase() + backend.slice(1),
    address: String(cluster.address ?? ""),
    state: cluster.connected === true ? "connected" : "fallback",
    since: typeof cluster.since === "string" ? cluster.since : null,
    lastError: typeof cluster.last_error === "string" && cluster.last_error ? cluster.last_error : null,
    fallbacks: count(cluster.fallbacks),
    reconnects: count(cluster.reconnects),
    published: count(cluster.published),
    applied: count(cluster.applied),
    dropped: count(cluster.dropped),
  };
}
