// Routing by model (routing.model_rules, first match wins) and each endpoint's model_map (exact
// names first, then globs from the most specific), from GET /api/v1/routing/model-rules (see
// docs/models.md). Shown on the Routing page; its strings live here, in English and Chinese.
import { getJson } from "../api";
import { useLang } from "../i18n";
import { useInterval, useLoad } from "../store";
import { Badge, Card, Empty } from "./common";

const STRINGS = {
  en: {
    title: "Models: routing rules and mappings",
    rules: "Rules (first match wins)",
    noRules: "No routing.model_rules: every model uses the active group.",
    maps: "Model maps (per endpoint, not inherited)",
    noMaps: "No endpoint has a model_map: models pass unchanged.",
    match: "Match",
    group: "Group",
    failover: "Failover",
    onlyGroup: "only this group",
    asUsual: "as usual",
    endpoint: "Endpoint",
    sent: "Sent as",
    glob: "glob",
    exact: "exact",
    loading: "Loading…",
  },
  zh: {
    title: "模型：路由规则与映射",
    rules: "规则（首个匹配生效）",
    noRules: "未配置 routing.model_rules：所有模型使用当前活动组。",
    maps: "模型映射（按端点，不继承）",
    noMaps: "没有端点配置 model_map：模型名原样转发。",
    match: "匹配",
    group: "组",
    failover: "故障转移",
    onlyGroup: "仅此组",
    asUsual: "照常",
    endpoint: "端点",
    sent: "发送为",
    glob: "通配",
    exact: "精确",
    loading: "加载中…",
  },
} as const;

type Strings = (typeof STRINGS)["en"] | (typeof STRINGS)["zh"];

export function ModelRulesCard() {
  const lang = useLang();
  const s: Strings = STRINGS[lang] ?? STRINGS.en;
  const slow = useInterval(15_000);
  const view = useLoad(() => getJson("/api/v1/routing/model-rules"), [slow], 500);
  const data: any = view.data;
  const rules: any[] = data?.rules ?? [];
  const mapped: any[] = (data?.endpoints ?? []).filter((e: any) => (e.model_map ?? []).length > 0);
  return (
    <Card title={s.title} testId="model-rules-card">
      {!data ? (
        <Empty>{view.loading ? s.loading : s.noRules}</Empty>
      ) : (
        <>
          <h4>{s.rules}</h4>
          {rules.length === 0 ? (
            <Empty>{s.noRules}</Empty>
          ) : (
            <div className="table-wrap">
              <table data-testid="model-rules">
                <thead>
                  <tr>
                    <th>#</th>
                    <th>{s.match}</th>
                    <th>{s.group}</th>
                    <th>{s.failover}</th>
                  </tr>
                </thead>
                <tbody>
                  {rules.map((rule) => (
                    <tr key={rule.index} data-rule={rule.index}>
                      <td>{rule.index + 1}</td>
                      <td className="mono">{rule.match}</td>
                      <td className="strong">{rule.group}</td>
                      <td>{rule.only ? <Badge status="warn" tone="warn" label={s.onlyGroup} /> : <span className="muted">{s.asUsual}</span>}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <h4>{s.maps}</h4>
          {mapped.length === 0 ? (
            <Empty>{s.noMaps}</Empty>
          ) : (
            <div className="table-wrap">
              <table data-testid="model-maps">
                <thead>
                  <tr>
                    <th>{s.endpoint}</th>
                    <th>{s.match}</th>
                    <th>{s.sent}</th>
                  </tr>
                </thead>
                <tbody>
                  {mapped.flatMap((e) =>
                    (e.model_map as any[]).map((entry, index) => (
                      <tr key={`${e.endpoint}/${entry.match}`} data-endpoint={e.endpoint}>
                        <td className="strong">
                          {index === 0 ? e.endpoint : ""}
                          {index === 0 && <span className="muted small"> ({e.group})</span>}
                        </td>
                        <td className="mono">
                          {entry.match} <span className="muted small">{entry.glob ? s.glob : s.exact}</span>
                        </td>
                        <td className="mono">{entry.model}</td>
                      </tr>
                    )),
                  )}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </Card>
  );
}
