// Subscription accounts card (Endpoints page): per endpoint whose upstream is a Claude Pro/Max
// account, its status, each usage window's utilization and reset (the representative window
// marked), whether new sessions are drained (routing.quota_drain_at) and how long a rejected
// account stays blocked (GET /api/v1/routing/quota; see docs/quotas.md). Its strings live here,
// in English and Chinese, so the card stays one self-contained file.
import { getJson } from "../api";
import { time } from "../format";
import { useLang } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { subscriptionRows } from "../subscriptions";
import { Badge, Card, Empty } from "./common";

const STRINGS = {
  en: {
    title: "Subscription quotas",
    endpoint: "Endpoint",
    status: "Status",
    windows: "Windows (utilization, reset)",
    state: "State",
    blocked: "Blocked until",
    ok: "OK",
    draining: "New sessions drained",
    rejected: "Rejected until reset",
    decides: "decides",
    resets: "resets",
    drainAt: "drains at {percent}%",
    none: "No endpoint reported a subscription account (anthropic-ratelimit-unified-* headers)",
    loading: "Loading…",
  },
  zh: {
    title: "订阅配额",
    endpoint: "端点",
    status: "状态",
    windows: "窗口（使用率，重置）",
    state: "路由状态",
    blocked: "封锁至",
    ok: "正常",
    draining: "新会话已引流",
    rejected: "已拒绝，等待重置",
    decides: "代表窗口",
    resets: "重置于",
    drainAt: "{percent}% 时引流",
    none: "尚无端点报告订阅账户（anthropic-ratelimit-unified-* 响应头）",
    loading: "加载中…",
  },
} as const;

export function SubscriptionCard() {
  const lang = useLang();
  const s = STRINGS[lang] ?? STRINGS.en;
  const requests = useTopic("request");
  const tick = useInterval(5_000);
  const view = useLoad(() => getJson("/api/v1/routing/quota"), [Math.floor(requests / 2), tick], 300);
  const rows = subscriptionRows(view.data);
  return (
    <Card title={s.title} testId="subscription-card">
      {rows.length === 0 ? (
        <Empty>{view.loading ? s.loading : s.none}</Empty>
      ) : (
        <div className="table-wrap">
          <table data-testid="subscription-table">
            <thead>
              <tr>
                <th>{s.endpoint}</th>
                <th>{s.status}</th>
                <th>{s.windows}</th>
                <th>{s.state}</th>
                <th>{s.blocked}</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={row.endpoint} data-endpoint={row.endpoint}>
                  <td className="strong">{row.endpoint}</td>
                  <td className="mono small">{row.status}</td>
                  <td>
                    {row.windows.map((w) => (
                      <div key={w.window} data-window={w.window} className={w.representative ? "strong" : ""}>
                        {w.window} {w.percent === null ? "–" : `${w.percent}%`}
                        {w.representative && <span className="muted small"> ({s.decides})</span>}
                        {w.resetAt && (
                          <span className="muted small" title={w.resetAt}>
                            {" "}
                            · {s.resets} {time(w.resetAt)}
                          </span>
                        )}
                      </div>
                    ))}
                  </td>
                  <td>
                    <Badge
                      status={row.state}
                      tone={row.state === "rejected" ? "bad" : row.state === "draining" ? "warn" : "ok"}
                      label={row.state === "rejected" ? s.rejected : row.state === "draining" ? s.draining : s.ok}
                    />
                    <div className="muted small">{s.drainAt.replace("{percent}", String(Math.round(row.drainAt * 100)))}</div>
                  </td>
                  <td className="small" title={row.blockedUntil ?? ""}>
                    {row.blockedUntil ? time(row.blockedUntil) : "–"}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Card>
  );
}
