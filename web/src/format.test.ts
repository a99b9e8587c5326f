import { describe, expect, it } from "vitest";
import { parseDurationMs, clock } from "./format";
import { SseParser, parseFrame } from "./api";

describe("format", () => {
  it("parses Go durations", () => {
    expect(parseDurationMs("9m58s")).toBe(598_000);
    expect(parseDurationMs("250ms")).toBe(250);
    expect(parseDurationMs("1h0m0s")).toBe(3_600_000);
    expect(parseDurationMs("0s")).toBe(0);
    expect(parseDurationMs(12)).toBe(12);
    expect(parseDurationMs("nonsense")).toBeNull();
    expect(clock(598_000)).toBe("09:58");
  });
});

describe("sse", () => {
  it("splits frames and unwraps envelopes", () => {
    const frames: Array<[string, string]> = [];
    const p = new SseParser((e, d) => frames.push([e, d]));
    p.push(": ping\n\nevent: group\ndata: {\"type\":\"group\",\"data\":{\"x\":1},\"timestamp\":5}\nid: 5\n\nevent: sta");
    p.push("tus\r\ndata: {\"status\":\"running\"}\r\n\r\n");
    expect(frames.map((f) => f[0])).toEqual(["group", "status"]);
    expect(parseFrame("group", frames[0][1])).toEqual({ type: "group", data: { x: 1 }, timestamp: 5 });
    expect(parseFrame("status", frames[1][1])).toEqual({ type: "status", data: { status: "running" } });
  });
});
