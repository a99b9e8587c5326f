// Subscription accounts (Claude Pro/Max behind an endpoint) as the dashboard shows them: one row
// per endpoint that reported `anthropic-ratelimit-unified-*` headers, from
// GET /api/v1/routing/quota (see docs/quotas.md). Pure, so it is unit tested.

/** One usage window of an account, ready to show. */
export type WindowRow = {
  window: string;
  /** 0-100, rounded; null when unknown. */
  percent: number | null;
  resetAt: string | null;
  representative: boolean;
};

/** One endpoint's account, ready to show. */
export type SubscriptionRow = {
  endpoint: string;
  /** allowed | allowed_warning | rejected | unknown */
  status: string;
  /** ok | draining | rejected: the badge's state. */
  state: "ok" | "draining" | "rejected";
  representativeWindow: string | null;
  drainAt: number;
  windows: WindowRow[];
  resetAt: string | null;
  blockedUntil: string | null;
};

/** The rows for the endpoints of a /api/v1/routing/quota answer that have an account. */
export function subscriptionRows(answer: unknown): SubscriptionRow[] {
  const endpoints: any[] = (answer as any)?.endpoints ?? [];
  return endpoints
    .filter((e) => e && e.subscription)
    .map((e) => {
      const s = e.subscription;
      const windows: any[] = Array.isArray(s.windows) ? s.windows : [];
      return {
        endpoint: String(e.endpoint),
        status: s.status ?? "unknown",
        state: s.rejected ? "rejected" : s.draining ? "draining" : "ok",
        representativeWindow: s.representative_window ?? null,
        drainAt: Number(s.drain_at ?? 0.9),
        windows: windows
          .filter((w) => w.current !== false)
          .map((w) => ({
            window: String(w.window),
            percent: typeof w.utilization === "number" ? Math.round(w.utilization * 100) : null,
            resetAt: w.reset_at ?? null,
            representative: Boolean(w.representative),
          })),
        resetAt: s.reset_at ?? null,
        blockedUntil: e.blocked_until ?? null,
      } as SubscriptionRow;
    });
}
