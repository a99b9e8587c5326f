import { describe, expect, it } from "vitest";
import { subscriptionRows } from "./subscriptions";

describe("subscriptionRows", () => {
  it("keeps endpoints with an account and shows their current windows", () => {
    const rows = subscriptionRows({
      endpoints: [
        { endpoint: "relay", reported: false, subscription: null },
        {
          endpoint: "max-1",
          blocked_until: "2026-12-04T21:00:00.000Z",
          subscription: {
            status: "rejected",
            rejected: true,
            draining: true,
            drain_at: 0.9,
            representative_window: "5h",
            reset_at: "2026-12-04T21:00:00.000Z",
            windows: [
              { window: "5h", utilization: 1, reset_at: "2026-12-04T21:00:00.000Z", current: true, representative: true },
              { window: "7d", utilization: 0.304, reset_at: null, current: true, representative: false },
              { window: "old", utilization: 0.5, reset_at: null, current: false, representative: false },
            ],
          },
        },
        { endpoint: "max-2", subscription: { status: "allowed_warning", rejected: false, draining: true, drain_at: 0.8, windows: [] } },
      ],
    });
    expect(rows.map((r) => r.endpoint)).toEqual(["max-1", "max-2"]);
    expect(rows[0].state).toBe("rejected");
    expect(rows[0].blockedUntil).toBe("2026-12-04T21:00:00.000Z");
    expect(rows[0].windows).toEqual([
      { window: "5h", percent: 100, resetAt: "2026-12-04T21:00:00.000Z", representative: true },
      { window: "7d", percent: 30, resetAt: null, representative: false },
    ]);
    expect(rows[1].state).toBe("draining");
    expect(rows[1].drainAt).toBe(0.8);
    expect(subscriptionRows(null)).toEqual([]);
  });
});
