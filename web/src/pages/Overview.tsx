import { useEffect, useMemo, useRef } from "react";
import type { ChartConfiguration } from "chart.js";
import { getJson } from "../api";
import { ChartView, PALETTE } from "../chart";
import { ErrorBox } from "../App";
import { clusterView, type ClusterView } from "../cluster";
import { ms, num, pct, time, usd } from "../format";
import { useT } from "../i18n";
import { REQUEST_FINAL_TOPIC, useInterval, useLive, useLoad, useThrottledTopic, useTopic } from "../store";
import { Badge, Card, Stat, todayStartIso } from "./common";

interface Sample {
  at: number;
  total: number;
  failed: number;
}

/** Re-colours a Chart.js-shaped answer from the API with the dashboard palette. */
function recolor(chart: any, type: "line" | "bar" = "line"): ChartConfiguration {
  const datasets = (chart?.datasets ?? []).map((d: any, i: number) => ({
    ...d,
    borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length] + "33",
    pointRadius: 0,
    borderWidth: 2,
    tension: 0.3,
  }));
  return {
    type,
    data: { labels: chart?.labels ?? [], datasets },
    options: { scales: { y: { beginAtZero: true } } },
  };
}

export function Overview() {
  const t = useT();
  const tick = useInterval(2000);
  const connectionTopic = useTopic("connection");
  // Today's totals change when a request finishes: refetch at most once per 5 s.
  const finishedRequests = useThrottledTopic(REQUEST_FINAL_TOPIC, 5000);
  const groupTopic = useTopic("group");
  const chartTopic = useTopic("chart");
  const slow = useInterval(30_000);

  const status = useLoad(() => getJson("/api/v1/status"), [slow]);
  const conns = useLoad(() => getJson("/api/v1/connections"), [tick, connectionTopic], 250);
  const groups = useLoad(() => getJson("/api/v1/groups"), [groupTopic], 200);
  const today = useLoad(
    () => getJson(`/api/v1/usage/stats?start_date=${encodeURIComponent(todayStartIso())}&end_date=${encodeURIComponent(new Date().toISOString())}`),
    [finishedRequests, slow],
    1000,
  );
  const trends = useLoad(() => getJson("/api/v1/chart/request-trends?minutes=30"), [chartTopic, slow], 1000);
  const latency = useLoad(() => getJson("/api/v1/chart/response-times?minutes=30"), [chartTopic, slow], 1000);
  const live = useLive((s) => s.connections);
  // The stream's `status` event (every 10 s) is fresher than the 30 s fetch: the link to the
  // other instances shows the newer of the two.
  const liveStatus = useLive((s) => s.status);

  // Request rate and error rate over the last minute, from successive totals.
  const samples = useRef<Sample[]>([]);
  const c = conns.data ?? live ?? {};
  useEffect(() => {
    const total = Number(c.total_requests);
    if (!Number.isFinite(total)) return;
    const now = Date.now();
    samples.current = [...samples.current.filter((s) => now - s.at < 60_000), { at: now, total, failed: Number(c.failed_requests) || 0 }];
  }, [c.total_requests, c.failed_requests, tick]);
  const window = samples.current;
  const first = window[0];
  const last = window[window.length - 1];
  const span = first && last ? (last.at - first.at) / 1000 : 0;
  const rps = span >= 1 ? (last.total - first.total) / span : 0;
  const recentTotal = first && last ? last.total - first.total : 0;
  const recentFailed = first && last ? last.failed - first.failed : 0;
  const overallTotal = Number(c.total_requests) || 0;
  const errorRate = recentTotal > 0 ? (100 * recentFailed) / recentTotal : overallTotal > 0 ? (100 * (Number(c.failed_requests) || 0)) / overallTotal : 0;

  const g = groups.data ?? {};
  const activeGroup =
    (typeof g.active_group === "string" ? g.active_group : g.active_group?.name) ??
    (g.groups ?? []).find((x: any) => x.is_active)?.name ??
    "–";
  const day = today.data?.data ?? {};
  const s = status.data ?? {};
  const version = typeof s.version === "string" ? s.version : s.version?.version;
  const cluster = clusterView(status.data, liveStatus);

  const trendConfig = useMemo(() => recolor(trends.data), [trends.data]);
  const latencyConfig = useMemo(() => recolor(latency.data), [latency.data]);

  return (
    <div className="stack">
      <ErrorBox error={conns.error ?? status.error} />
      <div className="stats">
        <Stat testId="stat-rps" label={t("overview.rps")} value={num(rps, 2)} sub={`${t("overview.active")}: ${num(c.active_connections)}`} />
        <Stat testId="stat-latency" label={t("overview.latency")} value={ms(c.average_response_time)} />
        <Stat testId="stat-error-rate" label={t("overview.errorRate")} value={pct(errorRate)} tone={errorRate > 5 ? "bad" : ""} sub={`${t("overview.failed")}: ${num(c.failed_requests)}`} />
        <Stat testId="stat-tokens" label={t("overview.tokensToday")} value={num(day.total_tokens)} sub={`${t("overview.requestsToday")}: ${num(day.total_requests)}`} />
        <Stat testId="stat-cost" label={t("overview.costToday")} value={usd(day.total_cost_usd)} />
        <Stat testId="stat-active-group" label={t("overview.activeGroup")} value={activeGroup} sub={`${t("overview.uptime")}: ${s.uptime ?? "–"}`} tone="accent" />
      </div>
      {cluster && <ClusterCard cluster={cluster} />}
      <div className="grid2">
        <Card title={t("overview.trend")}>
          <ChartView config={trendConfig} label={t("overview.trend")} />
        </Card>
        <Card title={t("overview.latencyChart")}>
          <ChartView config={latencyConfig} label={t("overview.latencyChart")} />
        </Card>
      </div>
      <Card title={`cc-forwarder ${version ?? ""}`}>
        <dl className="kv">
          <dt>{t("common.status")}</dt>
          <dd>{s.status ?? "–"}</dd>
          <dt>Strategy</dt>
          <dd>{typeof s.strategy === "string" ? s.strategy : s.strategy?.type ?? "–"}</dd>
          <dt>Proxy</dt>
          <dd>{s.server ? `${s.server.host ?? ""}:${s.server.proxy_port ?? ""}` : "–"}</dd>
          <dt>{t("overview.total")}</dt>
          <dd>
            {num(c.total_requests)} · {t("overview.success")} {num(c.successful_requests)} · {t("overview.failed")} {num(c.failed_requests)}
            {c.suspended ? ` · ${t("overview.suspended")} ${num(c.suspended.suspended_requests)}` : ""}
          </dd>
          <dt>Started</dt>
          <dd>{s.start_time ?? "–"}</dd>
        </dl>
      </Card>
    </div>
  );
}

/** The link to the other instances (cluster.redis_url); shown only when one is configured. */
function ClusterCard({ cluster }: { cluster: ClusterView }) {
  const t = useT();
  const connected = cluster.state === "connected";
  return (
    <Card
      testId="cluster-card"
      title={`${t("cluster.title")} · ${cluster.backend}`}
      actions={
        <Badge
          status={cluster.state}
          tone={connected ? "ok" : "bad"}
          label={connected ? t("cluster.connected") : t("cluster.fallback")}
        />
      }
    >
      {!connected && <div className="warning">{t("cluster.fallbackHint", { backend: cluster.backend })}</div>}
      <dl className="kv">
        <dt>{t("cluster.address")}</dt>
        <dd>{cluster.address || "–"}</dd>
        <dt>{t("cluster.since")}</dt>
        <dd>{time(cluster.since)}</dd>
        {cluster.lastError && (
          <>
            <dt>{t("cluster.lastError")}</dt>
            <dd className={connected ? "" : "bad-text"}>{cluster.lastError}</dd>
          </>
        )}
        <dt>{t("cluster.fallbacks")}</dt>
        <dd>{num(cluster.fallbacks)}</dd>
        <dt>{t("cluster.reconnects")}</dt>
        <dd>{num(cluster.reconnects)}</dd>
        <dt>{t("cluster.published")}</dt>
        <dd>{num(cluster.published)}</dd>
        <dt>{t("cluster.applied")}</dt>
        <dd>{num(cluster.applied)}</dd>
        <dt>{t("cluster.dropped")}</dt>
        <dd className={cluster.dropped > 0 ? "bad-text" : ""}>{num(cluster.dropped)}</dd>
      </dl>
    </Card>
  );
}
