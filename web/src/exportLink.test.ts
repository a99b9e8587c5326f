import { describe, expect, it } from "vitest";
import { exportQuery, PERIOD_SECONDS } from "./exportLink";

const now = new Date("2026-12-04T12:00:00.000Z");

function params(query: string): Record<string, string> {
  return Object.fromEntries(new URLSearchParams(query).entries());
}

describe("the usage export follows the selected period", () => {
  it("asks for exactly the period shown, ending now", () => {
    const cases: Array<[string, string]> = [
      ["1h", "2026-12-04T11:00:00.000Z"],
      ["1d", "2026-12-03T12:00:00.000Z"],
      ["7d", "2026-11-27T12:00:00.000Z"],
      ["30d", "2026-11-04T12:00:00.000Z"],
      ["90d", "2026-09-05T12:00:00.000Z"],
    ];
    expect(cases.map(([p]) => p)).toEqual(Object.keys(PERIOD_SECONDS));
    for (const [period, start] of cases) {
      expect(params(exportQuery({ format: "csv", period, instance: "", now }))).toEqual({
        format: "csv",
        start_date: start,
        end_date: "2026-12-04T12:00:00.000Z",
      });
    }
  });

  it("keeps the format and the instance filter, encoded", () => {
    const query = exportQuery({ format: "json", period: "1h", instance: "eu west&1", now });
    expect(query).toBe(
      "format=json&start_date=2026-12-04T11%3A00%3A00.000Z&end_date=2026-12-04T12%3A00%3A00.000Z&instance=eu+west%261",
    );
  });

  it("refuses a period it does not know instead of exporting another one", () => {
    expect(() => exportQuery({ format: "csv", period: "2y", instance: "", now })).toThrow("unknown period 2y");
  });
});
