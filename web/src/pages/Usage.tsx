import { useMemo, useState } from "react";
import type { ChartConfiguration } from "chart.js";
import { downloadExport, getJson } from "../api";
import { ChartView, PALETTE } from "../chart";
import { ErrorBox } from "../App";
import { ms, num, pct, usd } from "../format";
import { useT } from "../i18n";
import { exportQuery } from "../exportLink";
import { REQUEST_FINAL_TOPIC, useInterval, useLoad, useThrottledTopic } from "../store";
import { Card, Empty, Stat } from "./common";

const PERIODS = ["1h", "1d", "7d", "30d", "90d"];
/** Shortest time between two refetches of the stats driven by finished requests. */
const STATS_REFRESH_MS = 5000;

function localDate(d = new Date()): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function dualAxis(labels: string[], bars: { label: string; data: number[] }, line: { label: string; data: number[] }): ChartConfiguration {
  return {
    type: "bar",
    data: {
      labels,
      datasets: [
        { type: "bar", label: bars.label, data: bars.data, backgroundColor: PALETTE[0] + "aa", borderColor: PALETTE[0], yAxisID: "y", order: 1 },
        { type: "line", label: line.label, data: line.data, borderColor: PALETTE[2], backgroundColor: PALETTE[2], yAxisID: "y1", tension: 0.3, order: 0 } as any,
      ],
    },
    options: {
      scales: {
        y: { beginAtZero: true, position: "left" },
        y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } },
      },
    },
  };
}

export function Usage() {
  const t = useT();
  const [period, setPeriod] = useState("7d");
  // Several forwarders sharing one MySQL store: narrow everything to one instance id.
  const [instance, setInstance] = useState("");
  const instanceQuery = instance ? `&instance=${encodeURIComponent(instance)}` : "";
  // Stored stats change when a request finishes: refetch at most once per STATS_REFRESH_MS.
  const refresh = useThrottledTopic(REQUEST_FINAL_TOPIC, STATS_REFRESH_MS);
  const slow = useInterval(30_000);
  const stats = useLoad(
    () => getJson(`/api/v1/usage/stats?period=${period}${instanceQuery}`),
    [period, instanceQuery, refresh, slow],
    800,
  );
  const [date, setDate] = useState(localDate());
  const endpointCosts = useLoad(() => getJson(`/api/v1/chart/endpoint-costs?date=${date}`), [date, refresh, slow], 800);
  const [exportError, setExportError] = useState<string | null>(null);

  const s = stats.data?.data ?? {};
  const models: any[] = s.top_models ?? [];
  const endpoints: any[] = s.top_endpoints ?? [];
  const days: any[] = useMemo(() => [...(s.daily_stats ?? [])].sort((a, b) => String(a.date).localeCompare(String(b.date))), [s.daily_stats]);

  const modelChart = useMemo(
    () =>
      dualAxis(
        models.map((m) => m.model_name || "unknown"),
        models.some((m) => m.total_tokens !== undefined)
          ? { label: t("usage.tokens"), data: models.map((m) => Number(m.total_tokens) || 0) }
          : { label: t("usage.requests"), data: models.map((m) => Number(m.request_count) || 0) },
        { label: t("usage.cost"), data: models.map((m) => Number(m.total_cost_usd) || 0) },
      ),
    [models, t],
  );
  const endpointChart = useMemo((): ChartConfiguration => {
    const c = endpointCosts.data ?? {};
    const ds = c.datasets ?? [];
    return dualAxis(
      c.labels ?? [],
      { label: t("usage.tokens"), data: ds[0]?.data ?? [] },
      { label: t("usage.cost"), data: ds[1]?.data ?? [] },
    );
  }, [endpointCosts.data, t]);
  const dayChart = useMemo(
    () =>
      dualAxis(
        days.map((d) => d.date),
        days.some((d) => d.total_tokens !== undefined)
          ? { label: t("usage.tokens"), data: days.map((d) => Number(d.total_tokens) || 0) }
          : { label: t("usage.requests"), data: days.map((d) => Number(d.request_count) || 0) },
        { label: t("usage.cost"), data: days.map((d) => Number(d.total_cost_usd) || 0) },
      ),
    [days, t],
  );

  // The export covers the period shown, ending when the button is clicked (the href is only
  // what a "copy link" gets; the click computes the period afresh).
  const exportHref = (format: "csv" | "json") =>
    `/api/v1/usage/export?${exportQuery({ format, period, instance, now: new Date() })}`;
  const onExport = (format: "csv" | "json") => (e: React.MouseEvent) => {
    e.preventDefault();
    setExportError(null);
    downloadExport(exportQuery({ format, period, instance, now: new Date() })).catch((err) =>
      setExportError(String(err?.message ?? err)),
    );
  };

  return (
    <div className="stack">
      <ErrorBox error={stats.error ?? exportError} />
      <div className="row wrap">
        <div className="segmented" role="group" aria-label={t("usage.period")}>
          {PERIODS.map((p) => (
            <button key={p} className={p === period ? "on" : ""} onClick={() => setPeriod(p)} data-testid={`period-${p}`}>
              {p}
            </button>
          ))}
        </div>
        <input
          placeholder={t("requests.instance")}
          aria-label={t("requests.instance")}
          value={instance}
          onChange={(e) => setInstance(e.target.value.trim())}
          data-testid="usage-instance"
        />
        <div className="spacer" />
        <a className="button" href={exportHref("csv")} download onClick={onExport("csv")} data-testid="export-csv">
          ⇩ {t("usage.exportCsv")}
        </a>
        <a className="button" href={exportHref("json")} download onClick={onExport("json")} data-testid="export-json">
          ⇩ {t("usage.exportJson")}
        </a>
      </div>
      <div className="stats">
        <Stat label={t("usage.totalRequests")} value={num(s.total_requests)} sub={`${t("overview.failed")}: ${num(s.failed_requests)}`} />
        <Stat label={t("usage.successRate")} value={pct(s.success_rate)} />
        <Stat label={t("usage.totalTokens")} value={num(s.total_tokens)} />
        <Stat label={t("usage.totalCost")} value={usd(s.total_cost_usd)} />
        <Stat label={t("usage.avgDuration")} value={ms(s.avg_duration_ms)} />
      </div>
      <div className="grid2">
        <Card title={t("usage.byModel")}>
          {models.length ? <ChartView config={modelChart} label={t("usage.byModel")} /> : <Empty>{t("common.none")}</Empty>}
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>{t("requests.model")}</th>
                  <th>{t("usage.requests")}</th>
                  {models.some((m) => m.total_tokens !== undefined) && <th>{t("usage.tokens")}</th>}
                  <th>{t("usage.cost")}</th>
                  <th>{t("usage.avgCost")}</th>
                </tr>
              </thead>
              <tbody>
                {models.map((m) => (
                  <tr key={m.model_name}>
                    <td>{m.model_name || "unknown"}</td>
                    <td>{num(m.request_count)}</td>
                    {m.total_tokens !== undefined && <td>{num(m.total_tokens)}</td>}
                    <td>{usd(m.total_cost_usd)}</td>
                    <td>{usd(m.avg_cost_usd)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </Card>
        <Card title={t("usage.byEndpoint")} actions={<input type="date" value={date} onChange={(e) => setDate(e.target.value)} />}>
          {(endpointCosts.data?.labels ?? []).length ? <ChartView config={endpointChart} label={t("usage.byEndpoint")} /> : <Empty>{t("common.none")}</Empty>}
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>{t("requests.endpoint")}</th>
                  <th>{t("usage.requests")}</th>
                  <th>{t("usage.successRate")}</th>
                  <th>{t("usage.avgDuration")}</th>
                </tr>
              </thead>
              <tbody>
                {endpoints.map((e) => (
                  <tr key={`${e.endpoint_name}/${e.group_name}`}>
                    <td>
                      {e.endpoint_name || "–"} <span className="muted small">{e.group_name}</span>
                    </td>
                    <td>{num(e.request_count)}</td>
                    <td>{pct(e.success_rate)}</td>
                    <td>{ms(e.avg_duration_ms)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </Card>
      </div>
      <Card title={t("usage.byDay")}>
        {days.length ? <ChartView config={dayChart} label={t("usage.byDay")} /> : <Empty>{t("common.none")}</Empty>}
      </Card>
    </div>
  );
}
