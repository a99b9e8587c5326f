import { describe, expect, it } from "vitest";
import { clusterView, newestStatus } from "./cluster";

const connected = {
  timestamp: "2026-12-04T12:00:00.000Z",
  cluster: {
    backend: "redis",
    address: "redis://:***@10.0.0.5:6379",
    connected: true,
    since: "2026-12-04T11:00:00.000Z",
    last_error: null,
    fallbacks: 0,
    reconnects: 1,
    published: 5120,
    applied: 4870,
    dropped: 0,
  },
};

const down = {
  timestamp: "2026-12-04T12:03:10.000Z",
  cluster: {
    ...connected.cluster,
    connected: false,
    since: "2026-12-04T12:03:04.512Z",
    last_error: "connection refused",
    fallbacks: 12,
  },
};

describe("clusterView", () => {
  it("is null without a link, so the card is hidden", () => {
    expect(clusterView({ timestamp: "2026-12-04T12:00:00.000Z", cluster: null })).toBeNull();
    expect(clusterView({ status: "running" })).toBeNull();
    expect(clusterView(null, undefined)).toBeNull();
  });

  it("shows a connected link with its counters", () => {
    expect(clusterView(connected)).toEqual({
      backend: "Redis",
      address: "redis://:***@10.0.0.5:6379",
      state: "connected",
      since: "2026-12-04T11:00:00.000Z",
      lastError: null,
      fallbacks: 0,
      reconnects: 1,
      published: 5120,
      applied: 4870,
      dropped: 0,
    });
  });

  it("shows a lost link as local fallback with since and the last error", () => {
    const view = clusterView(down);
    expect(view?.state).toBe("fallback");
    expect(view?.since).toBe("2026-12-04T12:03:04.512Z");
    expect(view?.lastError).toBe("connection refused");
    expect(view?.fallbacks).toBe(12);
  });

  it("follows the newest status, fetched or streamed", () => {
    // The stream's status is newer than the last fetch: the link went down meanwhile.
    expect(clusterView(connected, down)?.state).toBe("fallback");
    expect(clusterView(down, connected)?.state).toBe("fallback");
    // Back up, seen by a later fetch.
    const back = { ...connected, timestamp: "2026-12-04T12:05:00.000Z" };
    expect(clusterView(back, down)?.state).toBe("connected");
    // A status without a timestamp loses to one with.
    expect(newestStatus({ cluster: null }, connected)).toBe(connected);
    expect(newestStatus(undefined, connected)).toBe(connected);
  });
});
