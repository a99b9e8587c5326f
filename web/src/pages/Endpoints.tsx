import { useState } from "react";
import { getJson, postJson } from "../api";
import { ErrorBox } from "../App";
import { ms, num, pct, time } from "../format";
import { useT } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { Badge, Card, Empty } from "./common";
import { HonestyCard } from "./Honesty";
import { SubscriptionCard } from "./Subscriptions";

export function Endpoints() {
  const t = useT();
  const topic = useTopic("endpoint");
  const requests = useTopic("request");
  const slow = useInterval(15_000);
  const list = useLoad(() => getJson("/api/v1/endpoints"), [topic, slow], 200);
  const perf = useLoad(() => getJson("/api/v1/endpoints/performance"), [topic, Math.floor(requests / 4), slow], 500);
  const [busy, setBusy] = useState<string | null>(null);
  const [message, setMessage] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [editing, setEditing] = useState<{ name: string; value: string } | null>(null);

  const perfByName = new Map<string, any>((perf.data?.endpoints ?? []).map((p: any) => [p.name, p]));
  const endpoints: any[] = list.data?.endpoints ?? [];

  const act = async (name: string, fn: () => Promise<any>) => {
    setBusy(name);
    setError(null);
    try {
      const r = await fn();
      setMessage(r?.message ?? t("common.ok"));
      list.reload();
      perf.reload();
    } catch (e: any) {
      setError(String(e?.message ?? e));
    } finally {
      setBusy(null);
    }
  };

  const savePriority = () => {
    if (!editing) return;
    const value = Number(editing.value);
    if (!Number.isInteger(value) || value < 1) {
      setError(t("endpoints.priorityInvalid"));
      return;
    }
    const name = editing.name;
    setEditing(null);
    void act(name, () => postJson(`/api/v1/endpoints/${encodeURIComponent(name)}/priority`, { priority: value }));
  };

  return (
    <div className="stack">
      <ErrorBox error={error ?? list.error} />
      {message && <div className="notice">{message}</div>}
      <Card title={`${t("nav.endpoints")} (${endpoints.length})`}>
        {endpoints.length === 0 ? (
          <Empty>{list.loading ? t("common.loading") : t("common.none")}</Empty>
        ) : (
          <div className="table-wrap">
            <table data-testid="endpoints-table">
              <thead>
                <tr>
                  <th>{t("common.name")}</th>
                  <th>{t("common.group")}</th>
                  <th>{t("common.priority")}</th>
                  <th>{t("endpoints.health")}</th>
                  <th>{t("endpoints.latency")}</th>
                  <th>{t("endpoints.successRate")}</th>
                  <th>{t("endpoints.requests")}</th>
                  <th>{t("endpoints.lastCheck")}</th>
                  <th>{t("common.actions")}</th>
                </tr>
              </thead>
              <tbody>
                {endpoints.map((e) => {
                  const p = perfByName.get(e.name) ?? {};
                  const health = e.never_checked ? "unchecked" : e.healthy ? "healthy" : "unhealthy";
                  return (
                    <tr key={e.name} data-endpoint={e.name}>
                      <td>
                        <div className="strong">{e.name}</div>
                        <div className="muted small mono">{e.url}</div>
                      </td>
                      <td>
                        {e.group ?? "–"}
                        {e.group_priority !== undefined && <span className="muted small"> #{e.group_priority}</span>}
                      </td>
                      <td>
                        {editing?.name === e.name ? (
                          <span className="row">
                            <input
                              className="narrow"
                              type="number"
                              min={1}
                              value={editing?.value ?? ""}
                              autoFocus
                              onChange={(ev) => setEditing({ name: e.name, value: ev.target.value })}
                              onKeyDown={(ev) => ev.key === "Enter" && savePriority()}
                            />
                            <button className="small primary" onClick={savePriority}>
                              {t("common.save")}
                            </button>
                            <button className="small" onClick={() => setEditing(null)}>
                              {t("common.cancel")}
                            </button>
                          </span>
                        ) : (
                          <button className="link" title={t("endpoints.editPriority")} onClick={() => setEditing({ name: e.name, value: String(e.priority ?? 1) })}>
                            {e.priority ?? "–"} ✎
                          </button>
                        )}
                      </td>
                      <td>
                        <Badge status={health} tone={health === "healthy" ? "ok" : health === "unhealthy" ? "bad" : "info"} label={t(`endpoints.${health}` as any)} />
                        {e.error && <div className="muted small">{e.error}</div>}
                      </td>
                      <td>{ms(e.response_time)}</td>
                      <td>{p.total_requests ? pct(p.success_rate) : "–"}</td>
                      <td>
                        {num(p.total_requests ?? 0)}
                        {p.failed_requests ? <span className="bad-text small"> ({num(p.failed_requests)} ✗)</span> : null}
                      </td>
                      <td className="small">{e.never_checked ? "–" : time(e.last_check)}</td>
                      <td>
                        <button className="small" disabled={busy === e.name} onClick={() => act(e.name, () => postJson(`/api/v1/endpoints/${encodeURIComponent(e.name)}/health-check`))}>
                          {busy === e.name ? "…" : t("endpoints.check")}
                        </button>
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </Card>
      <SubscriptionCard />
      <HonestyCard />
    </div>
  );
}
