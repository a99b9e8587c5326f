import { describe, expect, it } from "vitest";
import { against } from "./pages/Keys";

const plain = (v: unknown) => String(v);

describe("against", () => {
  it("shows the used amount alone when there is no limit", () => {
    expect(against("3", 3, null, plain)).toBe("3");
    expect(against("3", 3, undefined, plain)).toBe("3");
  });
  it("shows used / limit with the share of the limit", () => {
    expect(against("$1.25", 1.25, 5, (v) => `$${Number(v).toFixed(2)}`)).toBe("$1.25 / $5.00 (25%)");
    expect(against("2", 2, 2, plain)).toBe("2 / 2 (100%)");
  });
});
