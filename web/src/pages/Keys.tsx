// Inbound API keys panel: each key's limits (auth.tokens[].limits) and its usage against them now,
// from GET /api/v1/keys (see docs/keys.md): spend today and this month against the budgets and
// when they reset, requests in the last minute against the rate, requests in flight against the
// concurrency limit, and requests queued. Names only: the API never sends a key. Its strings live
// here, in English and Chinese, so the panel stays self-contained.
import { getJson } from "../api";
import { num, time, usd } from "../format";
import { useLang } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { Badge, Card, Empty } from "./common";

const STRINGS = {
  en: {
    title: "API keys and their limits",
    key: "Key",
    today: "Spent today",
    month: "Spent this month",
    rate: "Requests / min",
    concurrency: "In flight",
    queued: "Queued",
    state: "State",
    ok: "OK",
    exceeded_daily: "Daily budget reached",
    exceeded_monthly: "Monthly budget reached",
    resets: "resets",
    unlimited: "no limit",
    none: "No named keys (auth.tokens)",
    loading: "Loading…",
  },
  zh: {
    title: "API 密钥及其限额",
    key: "密钥",
    today: "今日花费",
    month: "本月花费",
    rate: "每分钟请求",
    concurrency: "进行中",
    queued: "排队中",
    state: "状态",
    ok: "正常",
    exceeded_daily: "已达每日预算",
    exceeded_monthly: "已达每月预算",
    resets: "重置于",
    unlimited: "不限",
    none: "未配置命名密钥（auth.tokens）",
    loading: "加载中…",
  },
} as const;

type Strings = (typeof STRINGS)["en"] | (typeof STRINGS)["zh"];

/** `used / limit (percent)`, or `used` alone when there is no limit. */
export function against(used: string, usedValue: unknown, limit: unknown, format: (v: unknown) => string): string {
  if (limit === null || limit === undefined) return used;
  const l = Number(limit);
  const u = Number(usedValue);
  const share = Number.isFinite(l) && l > 0 && Number.isFinite(u) ? ` (${Math.round((u / l) * 100)}%)` : "";
  return `${used} / ${format(limit)}${share}`;
}

export function Keys() {
  const lang = useLang();
  const s: Strings = STRINGS[lang] ?? STRINGS.en;
  const requests = useTopic("request");
  const tick = useInterval(5_000);
  const view = useLoad(() => getJson("/api/v1/keys"), [Math.floor(requests / 2), tick], 300);
  const keys: any[] = (view.data as any)?.keys ?? [];
  return (
    <div className="stack" data-testid="keys-panel">
      <Card title={s.title} testId="keys-card">
        {keys.length === 0 ? (
          <Empty>{view.loading ? s.loading : s.none}</Empty>
        ) : (
          <div className="table-wrap">
            <table data-testid="keys-table">
              <thead>
                <tr>
                  <th>{s.key}</th>
                  <th>{s.state}</th>
                  <th>{s.today}</th>
                  <th>{s.month}</th>
                  <th>{s.rate}</th>
                  <th>{s.concurrency}</th>
                  <th>{s.queued}</th>
                </tr>
              </thead>
              <tbody>
                {keys.map((k) => (
                  <tr key={k.name} data-key={k.name}>
                    <td className="strong">{k.name}</td>
                    <td>
                      {k.budget_exceeded ? (
                        <Badge status="bad" tone="bad" label={(s as any)[`exceeded_${k.budget_exceeded}`] ?? k.budget_exceeded} />
                      ) : (
                        <Badge status="ok" tone="ok" label={s.ok} />
                      )}
                    </td>
                    <td title={`${s.resets} ${time(k.day_resets_at)}`}>
                      {against(usd(k.spent_today_usd), k.spent_today_usd, k.daily_budget_usd, usd)}
                    </td>
                    <td title={`${s.resets} ${time(k.month_resets_at)}`}>
                      {against(usd(k.spent_this_month_usd), k.spent_this_month_usd, k.monthly_budget_usd, usd)}
                    </td>
                    <td>{k.requests_per_minute == null ? `${num(k.requests_last_minute)} · ${s.unlimited}` : against(num(k.requests_last_minute), k.requests_last_minute, k.requests_per_minute, num)}</td>
                    <td>{k.concurrency == null ? `${num(k.in_flight)} · ${s.unlimited}` : against(num(k.in_flight), k.in_flight, k.concurrency, num)}</td>
                    <td className={k.queued > 0 ? "strong" : ""}>{num(k.queued)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </div>
  );
}
