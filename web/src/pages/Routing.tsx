// Smart routing panel: prompt-cache affinity (cache-read ratio per endpoint and per session, moves,
// the cost affinity saved) and quota awareness (remaining quota, reset, burn rate, predicted
// exhaustion, draining) from GET /api/v1/routing/affinity and /api/v1/routing/quota (see
// docs/routing.md). Its strings live here, in English and Chinese, so the panel stays
// self-contained.
import { getJson } from "../api";
import { num, time, usd } from "../format";
import { useLang } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { Badge, Card, Empty, Stat } from "./common";
import { ModelRulesCard } from "./ModelRules";

const STRINGS = {
  en: {
    affinity: "Prompt-cache affinity",
    quota: "Quota and rate limits",
    on: "On",
    off: "Off (routing.session_affinity)",
    ttl: "TTL {ttl} (1h cache: {long})",
    sessions: "Live sessions",
    moves: "Moves",
    held: "Held turns",
    saved: "Saved by affinity",
    ratio: "Cache-read ratio",
    endpoint: "Endpoint",
    turns: "Turns",
    bound: "Bound sessions",
    cacheRead: "Cache read",
    input: "Input",
    cacheWrite: "Cache write",
    session: "Session",
    source: "Source",
    expires: "Expires in",
    movedFrom: "Moved from",
    dimension: "Limit",
    remaining: "Remaining",
    reset: "Reset",
    burn: "Burn rate",
    exhaustion: "Predicted exhaustion",
    state: "State",
    draining: "Draining",
    ok: "OK",
    noReport: "No rate-limit headers seen",
    none: "No data yet",
    loading: "Loading…",
    formula: "Saved = held cache-read tokens × (cache-write price − cache-read price) of the model",
    perSec: "/s",
    passed: "passed",
    reason_retry_after: "retry-after",
    reason_exhausted: "exhausted",
    reason_predicted: "runs out before reset",
  },
  zh: {
    affinity: "提示缓存亲和",
    quota: "配额与限流",
    on: "开启",
    off: "已关闭（routing.session_affinity）",
    ttl: "有效期 {ttl}（1 小时缓存：{long}）",
    sessions: "活跃会话",
    moves: "迁移次数",
    held: "保持的轮次",
    saved: "亲和节省",
    ratio: "缓存读取占比",
    endpoint: "端点",
    turns: "轮次",
    bound: "绑定会话",
    cacheRead: "缓存读取",
    input: "输入",
    cacheWrite: "缓存写入",
    session: "会话",
    source: "来源",
    expires: "剩余有效期",
    movedFrom: "迁移自",
    dimension: "限额",
    remaining: "剩余",
    reset: "重置",
    burn: "消耗速率",
    exhaustion: "预计耗尽",
    state: "状态",
    draining: "引流中",
    ok: "正常",
    noReport: "尚未收到限流响应头",
    none: "暂无数据",
    loading: "加载中…",
    formula: "节省 = 保持轮次的缓存读取 token × （缓存写入价 − 缓存读取价）",
    perSec: "/秒",
    passed: "已过",
    reason_retry_after: "retry-after",
    reason_exhausted: "已耗尽",
    reason_predicted: "重置前将耗尽",
  },
} as const;

type Strings = (typeof STRINGS)["en"] | (typeof STRINGS)["zh"];

function ratio(value: unknown): string {
  const v = Number(value);
  return value === null || value === undefined || !Number.isFinite(v) ? "–" : `${(v * 100).toFixed(1)}%`;
}

function seconds(value: unknown): string {
  const v = Number(value);
  if (value === null || value === undefined || !Number.isFinite(v)) return "–";
  if (v < 60) return `${v.toFixed(v < 10 ? 1 : 0)}s`;
  if (v < 3600) return `${Math.floor(v / 60)}m${Math.round(v % 60)}s`;
  return `${Math.floor(v / 3600)}h${Math.round((v % 3600) / 60)}m`;
}

export function RoutingPanel() {
  return (
    <div className="stack" data-testid="routing-panel">
      <AffinityCard />
      <QuotaCard />
      <ModelRulesCard />
    </div>
  );
}

function AffinityCard() {
  const lang = useLang();
  const s: Strings = STRINGS[lang] ?? STRINGS.en;
  const requests = useTopic("request");
  const slow = useInterval(15_000);
  const view = useLoad(() => getJson("/api/v1/routing/affinity?limit=50"), [Math.floor(requests / 4), slow], 500);
  const data: any = view.data;
  const endpoints: any[] = data?.endpoints ?? [];
  const sessions: any[] = data?.sessions ?? [];
  const subtitle = data
    ? `${data.enabled ? s.on : s.off} · ${s.ttl.replace("{ttl}", seconds(data.ttl_seconds)).replace("{long}", seconds(data.long_ttl_seconds))}`
    : "";
  return (
    <Card title={s.affinity} actions={<span className="muted small">{subtitle}</span>} testId="affinity-card">
      {!data ? (
        <Empty>{view.loading ? s.loading : s.none}</Empty>
      ) : (
        <>
          <div className="stats" data-testid="affinity-stats">
            <Stat label={s.sessions} value={num(data.active_sessions)} />
            <Stat label={s.ratio} value={ratio(data.totals?.cache_read_ratio)} />
            <Stat label={s.held} value={num(data.totals?.held_turns)} />
            <Stat label={s.moves} value={num(data.totals?.moves)} />
            <Stat label={s.saved} value={usd(data.totals?.saved_usd)} sub={<span className="small">{s.formula}</span>} testId="affinity-saved" />
          </div>
          {endpoints.length > 0 && (
            <div className="table-wrap">
              <table data-testid="affinity-endpoints">
                <thead>
                  <tr>
                    <th>{s.endpoint}</th>
                    <th>{s.ratio}</th>
                    <th>{s.turns}</th>
                    <th>{s.input}</th>
                    <th>{s.cacheWrite}</th>
                    <th>{s.cacheRead}</th>
                    <th>{s.bound}</th>
                    <th>{s.held}</th>
                    <th>{s.saved}</th>
                  </tr>
                </thead>
                <tbody>
                  {endpoints.map((e) => (
                    <tr key={e.endpoint} data-endpoint={e.endpoint}>
                      <td className="strong">{e.endpoint}</td>
                      <td className="strong">{ratio(e.cache_read_ratio)}</td>
                      <td>{num(e.turns)}</td>
                      <td>{num(e.input_tokens)}</td>
                      <td>{num(e.cache_creation_tokens)}</td>
                      <td>{num(e.cache_read_tokens)}</td>
                      <td>{num(e.bound_sessions)}</td>
                      <td>{num(e.held_turns)}</td>
                      <td>{usd(e.saved_usd)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
          {sessions.length > 0 && (
            <div className="table-wrap">
              <table data-testid="affinity-sessions">
                <thead>
                  <tr>
                    <th>{s.session}</th>
                    <th>{s.source}</th>
                    <th>{s.endpoint}</th>
                    <th>{s.expires}</th>
                    <th>{s.ratio}</th>
                    <th>{s.turns}</th>
                    <th>{s.moves}</th>
                    <th>{s.saved}</th>
                  </tr>
                </thead>
                <tbody>
                  {sessions.map((x) => (
                    <tr key={x.session} data-session={x.session}>
                      <td className="mono">{x.session}</td>
                      <td>{x.source}</td>
                      <td>
                        {x.endpoint}
                        {x.long_ttl && <span className="muted small"> · 1h</span>}
                      </td>
                      <td>{seconds(x.expires_in_seconds)}</td>
                      <td>{ratio(x.cache_read_ratio)}</td>
                      <td>{num(x.turns)}</td>
                      <td>
                        {num(x.moves)}
                        {x.moved_from && (
                          <span className="muted small">
                            {" "}
                            ({s.movedFrom} {x.moved_from})
                          </span>
                        )}
                      </td>
                      <td>{usd(x.saved_usd)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </Card>
  );
}

function QuotaCard() {
  const lang = useLang();
  const s: Strings = STRINGS[lang] ?? STRINGS.en;
  const requests = useTopic("request");
  const tick = useInterval(5_000);
  const view = useLoad(() => getJson("/api/v1/routing/quota"), [Math.floor(requests / 2), tick], 300);
  const endpoints: any[] = (view.data as any)?.endpoints ?? [];
  const reason = (r: any) => (r ? (s as any)[`reason_${r.reason}`] ?? r.reason : "");
  return (
    <Card title={s.quota} testId="quota-card">
      {endpoints.length === 0 ? (
        <Empty>{view.loading ? s.loading : s.none}</Empty>
      ) : (
        <div className="table-wrap">
          <table data-testid="quota-table">
            <thead>
              <tr>
                <th>{s.endpoint}</th>
                <th>{s.state}</th>
                <th>{s.dimension}</th>
                <th>{s.remaining}</th>
                <th>{s.reset}</th>
                <th>{s.burn}</th>
                <th>{s.exhaustion}</th>
              </tr>
            </thead>
            <tbody>
              {endpoints.flatMap((e) => {
                const state = e.draining ? (
                  <Badge status="warn" tone="warn" label={`${s.draining}: ${reason(e.drain_reason)}`} />
                ) : (
                  <Badge status="ok" tone="ok" label={s.ok} />
                );
                const dims: any[] = e.dimensions ?? [];
                if (!e.reported || dims.length === 0) {
                  return [
                    <tr key={e.endpoint} data-endpoint={e.endpoint}>
                      <td className="strong">{e.endpoint}</td>
                      <td>{state}</td>
                      <td colSpan={5} className="muted small">
                        {e.retry_after_seconds ? `retry-after ${seconds(e.retry_after_seconds)}` : s.noReport}
                      </td>
                    </tr>,
                  ];
                }
                return dims.map((d, index) => (
                  <tr key={`${e.endpoint}/${d.dimension}`} data-endpoint={e.endpoint} className={d.reset_passed ? "muted" : ""}>
                    <td className="strong">{index === 0 ? e.endpoint : ""}</td>
                    <td>{index === 0 ? state : ""}</td>
                    <td>{d.dimension}</td>
                    <td>
                      {num(d.remaining)}
                      {d.limit !== null && d.limit !== undefined && <span className="muted small"> / {num(d.limit)}</span>}
                    </td>
                    <td title={d.reset_at ?? ""}>{d.reset_passed ? s.passed : d.reset_at ? `${seconds(d.reset_in_seconds)} (${time(d.reset_at)})` : "–"}</td>
                    <td>{d.burn_rate_per_sec ? `${num(d.burn_rate_per_sec, 2)}${s.perSec}` : "–"}</td>
                    <td className={d.runs_out_before_reset ? "bad-text" : ""}>{seconds(d.predicted_exhaustion_in_seconds)}</td>
                  </tr>
                ));
              })}
            </tbody>
          </table>
        </div>
      )}
    </Card>
  );
}
