// Relay honesty card: per-endpoint scores for model substitution, usage disagreement and burst
// streams, with the last flagged request and whether the endpoint is demoted
// (GET /api/v1/routing/honesty; see docs/routing.md). Its strings live here, in English and
// Chinese, so the card stays one self-contained file.
import { getJson } from "../api";
import { num, time } from "../format";
import { useLang } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { Badge, Card, Empty } from "./common";

const STRINGS = {
  en: {
    title: "Relay honesty",
    endpoint: "Endpoint",
    score: "Score",
    checks: "Checks",
    model: "Model substitution",
    usage: "Usage mismatch",
    burst: "Burst stream",
    lastFlag: "Last flag",
    state: "State",
    demoted: "Demoted",
    low: "Low score",
    trusted: "Trusted",
    asked: "asked",
    reported: "reported",
    off: "Relay honesty checking is off (routing.relay_honesty).",
    none: "No endpoints",
    loading: "Loading…",
    demoteOn: "Demotion on: below {threshold} after {checks} checks",
    demoteOff: "Demotion off (routing.demote_dishonest)",
  },
  zh: {
    title: "中转诚信度",
    endpoint: "端点",
    score: "得分",
    checks: "检查次数",
    model: "模型替换",
    usage: "用量不符",
    burst: "突发流",
    lastFlag: "最近标记",
    state: "状态",
    demoted: "已降级",
    low: "得分低",
    trusted: "可信",
    asked: "请求",
    reported: "上报",
    off: "中转诚信检查已关闭（routing.relay_honesty）。",
    none: "无端点",
    loading: "加载中…",
    demoteOn: "降级已开启：{checks} 次检查后低于 {threshold}",
    demoteOff: "降级已关闭（routing.demote_dishonest）",
  },
} as const;

type SignalScore = { score: number; checks: number; flags: number };

function Signal(props: { value?: SignalScore }) {
  const value = props.value;
  if (!value || value.checks === 0) return <span className="muted">–</span>;
  return (
    <span>
      {num(value.score, 2)}
      <span className={value.flags > 0 ? "bad-text small" : "muted small"}>
        {" "}
        ({num(value.flags)}/{num(value.checks)})
      </span>
    </span>
  );
}

export function HonestyCard() {
  const lang = useLang();
  const s = STRINGS[lang] ?? STRINGS.en;
  const requests = useTopic("request");
  const slow = useInterval(15_000);
  const view = useLoad(() => getJson("/api/v1/routing/honesty"), [Math.floor(requests / 4), slow], 500);
  const data: any = view.data;
  const endpoints: any[] = data?.endpoints ?? [];
  const subtitle = data
    ? data.demote_dishonest
      ? s.demoteOn.replace("{threshold}", num(data.threshold, 2)).replace("{checks}", num(data.min_checks))
      : s.demoteOff
    : "";

  return (
    <Card title={s.title} actions={<span className="muted small">{subtitle}</span>} testId="honesty-card">
      {data && data.enabled === false && <div className="muted small">{s.off}</div>}
      {endpoints.length === 0 ? (
        <Empty>{view.loading ? s.loading : s.none}</Empty>
      ) : (
        <div className="table-wrap">
          <table data-testid="honesty-table">
            <thead>
              <tr>
                <th>{s.endpoint}</th>
                <th>{s.score}</th>
                <th>{s.checks}</th>
                <th>{s.model}</th>
                <th>{s.usage}</th>
                <th>{s.burst}</th>
                <th>{s.state}</th>
                <th>{s.lastFlag}</th>
              </tr>
            </thead>
            <tbody>
              {endpoints.map((e) => {
                const tone = e.demoted ? "bad" : e.below_threshold ? "warn" : "ok";
                const label = e.demoted ? s.demoted : e.below_threshold ? s.low : s.trusted;
                const flag = e.last_flag;
                return (
                  <tr key={e.endpoint} data-endpoint={e.endpoint}>
                    <td>
                      <div className="strong">{e.endpoint}</div>
                      {e.group && <div className="muted small">{e.group}</div>}
                    </td>
                    <td className="strong">{e.checks > 0 ? num(e.score, 2) : "–"}</td>
                    <td>
                      {num(e.checks)}
                      {e.flagged_requests > 0 && <span className="bad-text small"> ({num(e.flagged_requests)} ⚑)</span>}
                    </td>
                    <td>
                      <Signal value={e.signals?.model_substitution} />
                    </td>
                    <td>
                      <Signal value={e.signals?.usage_mismatch} />
                    </td>
                    <td>
                      <Signal value={e.signals?.burst_stream} />
                    </td>
                    <td>
                      <Badge status={tone} tone={tone} label={label} />
                    </td>
                    <td className="small">
                      {flag ? (
                        <div>
                          <div className="mono">{flag.request_id}</div>
                          <div>
                            {flag.signal}: {s.asked} {flag.asked}, {s.reported} {flag.reported}
                          </div>
                          <div className="muted">{time(flag.at)}</div>
                        </div>
                      ) : (
                        <span className="muted">–</span>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </Card>
  );
}
