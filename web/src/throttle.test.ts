import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createThrottle } from "./throttle";
import { handleEvent, isFinalRequestEvent, REQUEST_FINAL_TOPIC, topicVersion } from "./store";

describe("createThrottle", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date("2026-12-04T12:00:00Z"));
  });
  afterEach(() => vi.useRealTimers());

  it("delivers the first value at once and folds a burst into one trailing delivery", () => {
    const delivered: number[] = [];
    const throttle = createThrottle<number>((v) => delivered.push(v), 5000);
    throttle.push(1);
    expect(delivered).toEqual([1]);
    // A burst of 100 finished requests within the interval: nothing until it ends, then the last.
    for (let v = 2; v <= 101; v++) {
      vi.advanceTimersByTime(10);
      throttle.push(v);
    }
    expect(delivered).toEqual([1]);
    vi.advanceTimersByTime(5000 - 1000 - 1);
    expect(delivered).toEqual([1]);
    vi.advanceTimersByTime(1);
    expect(delivered).toEqual([1, 101]);
    // Quiet afterwards: no delivery without a push.
    vi.advanceTimersByTime(60_000);
    expect(delivered).toEqual([1, 101]);
    // After a quiet interval the next value is delivered at once again.
    throttle.push(102);
    expect(delivered).toEqual([1, 101, 102]);
  });

  it("never delivers more than once per interval under steady load", () => {
    const delivered: number[] = [];
    const throttle = createThrottle<number>((v) => delivered.push(v), 5000);
    // 20 events a second for a minute.
    for (let i = 0; i < 1200; i++) {
      throttle.push(i);
      vi.advanceTimersByTime(50);
    }
    vi.advanceTimersByTime(5000);
    // Leading delivery, then one per 5 s over 60 s: 13, the last value included.
    expect(delivered.length).toBe(13);
    expect(delivered[delivered.length - 1]).toBe(1199);
  });

  it("drops a pending delivery when cancelled", () => {
    const delivered: number[] = [];
    const throttle = createThrottle<number>((v) => delivered.push(v), 5000);
    throttle.push(1);
    throttle.push(2);
    throttle.cancel();
    vi.advanceTimersByTime(10_000);
    expect(delivered).toEqual([1]);
  });
});

describe("request events", () => {
  it("only a final outcome bumps the finished-requests topic", () => {
    const event = (data: any) => handleEvent({ type: "connection", data });
    const before = topicVersion(REQUEST_FINAL_TOPIC);
    const requestsBefore = topicVersion("request");
    event({ request_id: "req-1", status: "forwarding", is_final: false });
    event({ request_id: "req-1", status: "streaming", is_final: false });
    expect(topicVersion(REQUEST_FINAL_TOPIC)).toBe(before);
    event({ request_id: "req-1", status: "completed", is_final: true });
    expect(topicVersion(REQUEST_FINAL_TOPIC)).toBe(before + 1);
    expect(topicVersion("request")).toBe(requestsBefore + 3);
    // Connection counters are not request events.
    event({ total_requests: 5, active_connections: 1 });
    expect(topicVersion(REQUEST_FINAL_TOPIC)).toBe(before + 1);
    expect(isFinalRequestEvent({ is_final: true })).toBe(false);
    expect(isFinalRequestEvent({ request_id: "x", is_final: "true" })).toBe(false);
  });
});
