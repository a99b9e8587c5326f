// Formatting helpers shared by the pages.

export function num(n: unknown, digits = 0): string {
  const v = Number(n);
  if (!Number.isFinite(v)) return "–";
  return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function usd(n: unknown): string {
  const v = Number(n);
  if (!Number.isFinite(v)) return "–";
  return "$" + v.toLocaleString(undefined, { minimumFractionDigits: v < 1 ? 4 : 2, maximumFractionDigits: v < 1 ? 6 : 2 });
}

export function pct(n: unknown): string {
  const v = Number(n);
  return Number.isFinite(v) ? `${v.toFixed(1)}%` : "–";
}

/** Parses Go-style durations ("1m30s", "250ms", "1.5s") or numbers of milliseconds. */
export function parseDurationMs(value: unknown): number | null {
  if (typeof value === "number") return value;
  if (typeof value !== "string" || !value) return null;
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value);
  const re = /(\d+(?:\.\d+)?)(h|ms|m|s|µs|us|ns)/g;
  let total = 0;
  let matched = false;
  let m: RegExpExecArray | null;
  while ((m = re.exec(value))) {
    matched = true;
    const n = Number(m[1]);
    const unit = m[2];
    total +=
      unit === "h" ? n * 3_600_000 : unit === "m" ? n * 60_000 : unit === "s" ? n * 1000 : unit === "ms" ? n : unit === "ns" ? n / 1e6 : n / 1000;
  }
  return matched ? total : null;
}

export function ms(value: unknown): string {
  const v = parseDurationMs(value);
  if (v === null) return "–";
  if (v >= 60_000) return clock(v);
  if (v >= 1000) return `${(v / 1000).toFixed(2)} s`;
  return `${Math.round(v)} ms`;
}

/** "mm:ss" or "h:mm:ss". */
export function clock(msValue: number): string {
  const total = Math.max(0, Math.round(msValue / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const pad = (x: number) => String(x).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s)}` : `${pad(m)}:${pad(s)}`;
}

export function time(value: unknown): string {
  if (value === null || value === undefined || value === "") return "–";
  const d = typeof value === "number" ? new Date(value < 1e12 ? value * 1000 : value) : new Date(String(value));
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString();
}

export function tokensOf(r: any): number {
  return ["input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens"].reduce(
    (sum, k) => sum + (Number(r?.[k]) || 0),
    0,
  );
}

export function statusClass(status: unknown): string {
  const s = String(status ?? "").toLowerCase();
  if (["completed", "success", "healthy", "active", "processing"].includes(s)) return "ok";
  if (["failed", "error", "timeout", "unhealthy", "rejected"].includes(s)) return "bad";
  if (["cancelled", "suspended", "retry", "paused", "cooldown"].includes(s)) return "warn";
  return "info";
}
