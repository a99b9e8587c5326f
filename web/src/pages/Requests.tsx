import { useMemo, useState } from "react";
import { getJson } from "../api";
import { ErrorBox } from "../App";
import { ms, num, time, tokensOf, usd } from "../format";
import { useT } from "../i18n";
import { navigate, usePath } from "../router";
import { useInterval, useLive, useLoad, useTopic } from "../store";
import { Badge, Card, Empty } from "./common";

const STATUSES = ["", "pending", "forwarding", "processing", "retry", "suspended", "completed", "failed", "cancelled", "error", "timeout"];
const PAGE_SIZES = [20, 50, 100, 200];

interface Filters {
  status: string;
  model: string;
  endpoint: string;
  group: string;
  instance: string;
  start_date: string;
  end_date: string;
}
const NO_FILTERS: Filters = { status: "", model: "", endpoint: "", group: "", instance: "", start_date: "", end_date: "" };

function query(filters: Filters, limit: number, offset: number): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) {
    if (!v) continue;
    q.set(k, k.endsWith("_date") ? new Date(v).toISOString() : v);
  }
  q.set("limit", String(limit));
  q.set("offset", String(offset));
  return q.toString();
}

export function Requests() {
  const path = usePath();
  const id = path.startsWith("/requests/") ? decodeURIComponent(path.slice("/requests/".length)) : null;
  return (
    <>
      <RequestList />
      {id && <RequestDetail id={id} />}
    </>
  );
}

function RequestList() {
  const t = useT();
  const [filters, setFilters] = useState<Filters>(NO_FILTERS);
  const [limit, setLimit] = useState(50);
  const [offset, setOffset] = useState(0);
  const requestTopic = useTopic("request");
  const slow = useInterval(15_000);
  const qs = query(filters, limit, offset);
  const list = useLoad(() => getJson(`/api/v1/usage/requests?${qs}`), [qs, requestTopic, slow], 120);
  const live = useLive((s) => s.requests);
  const models = useLoad(() => getJson("/api/v1/usage/models"), []);

  const rows: any[] = list.data?.data ?? [];
  const total = Number(list.data?.total ?? rows.length);
  const unfiltered = Object.values(filters).every((v) => !v) && offset === 0;
  // Requests the stream announced but the store has not listed yet (in flight), on the first page.
  const known = new Set(rows.map((r) => r.request_id));
  const pending = unfiltered ? live.filter((r) => !known.has(r.request_id)).slice(0, 20) : [];
  const pages = Math.max(1, Math.ceil(total / limit));
  const page = Math.floor(offset / limit) + 1;

  const set = (k: keyof Filters, v: string) => {
    setFilters({ ...filters, [k]: v });
    setOffset(0);
  };
  const modelNames: string[] = useMemo(() => (models.data?.data ?? []).map((m: any) => m.model_name), [models.data]);

  return (
    <div className="stack">
      <ErrorBox error={list.error} />
      <Card title={t("requests.filters")} actions={<button className="small" onClick={() => { setFilters(NO_FILTERS); setOffset(0); }}>✕</button>}>
        <div className="filters">
          <label>
            {t("common.status")}
            <select value={filters.status} onChange={(e) => set("status", e.target.value)} data-testid="filter-status">
              {STATUSES.map((s) => (
                <option key={s} value={s}>
                  {s || t("common.all")}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t("requests.model")}
            <input list="models" value={filters.model} onChange={(e) => set("model", e.target.value)} data-testid="filter-model" />
            <datalist id="models">
              {modelNames.map((m) => (
                <option key={m} value={m} />
              ))}
            </datalist>
          </label>
          <label>
            {t("requests.endpoint")}
            <input value={filters.endpoint} onChange={(e) => set("endpoint", e.target.value)} data-testid="filter-endpoint" />
          </label>
          <label>
            {t("common.group")}
            <input value={filters.group} onChange={(e) => set("group", e.target.value)} data-testid="filter-group" />
          </label>
          <label>
            {t("requests.instance")}
            <input value={filters.instance} onChange={(e) => set("instance", e.target.value)} data-testid="filter-instance" />
          </label>
          <label>
            {t("requests.from")}
            <input type="datetime-local" value={filters.start_date} onChange={(e) => set("start_date", e.target.value)} />
          </label>
          <label>
            {t("requests.to")}
            <input type="datetime-local" value={filters.end_date} onChange={(e) => set("end_date", e.target.value)} />
          </label>
        </div>
      </Card>
      <Card
        title={
          <span>
            {t("nav.requests")} <span className="live-dot" title={t("requests.live")} />
          </span>
        }
        actions={
          <label className="row small">
            {t("requests.pageSize")}
            <select value={limit} onChange={(e) => { setLimit(Number(e.target.value)); setOffset(0); }}>
              {PAGE_SIZES.map((n) => (
                <option key={n}>{n}</option>
              ))}
            </select>
          </label>
        }
      >
        {rows.length + pending.length === 0 ? (
          <Empty>{list.loading && !list.data ? t("common.loading") : t("common.none")}</Empty>
        ) : (
          <div className="table-wrap">
            <table data-testid="requests-table" className="clickable">
              <thead>
                <tr>
                  <th>{t("requests.time")}</th>
                  <th>{t("requests.id")}</th>
                  <th>{t("common.status")}</th>
                  <th>{t("requests.model")}</th>
                  <th>{t("requests.endpoint")}</th>
                  <th>{t("requests.http")}</th>
                  <th>{t("requests.duration")}</th>
                  <th>{t("requests.tokens")}</th>
                  <th>{t("requests.cost")}</th>
                </tr>
              </thead>
              <tbody>
                {pending.map((r) => (
                  <tr key={`live-${r.request_id}`} data-request-id={r.request_id} className="pending-row" onClick={() => navigate(`/requests/${encodeURIComponent(r.request_id)}`)}>
                    <td className="small">{time(r.timestamp ?? r._seen)}</td>
                    <td className="mono small">{r.request_id}</td>
                    <td>
                      <Badge status={r.status ?? "pending"} />
                    </td>
                    <td>{r.model_name ?? "–"}</td>
                    <td>{r.endpoint_name ?? "–"}</td>
                    <td>{r.http_status ?? "–"}</td>
                    <td>–</td>
                    <td>–</td>
                    <td>–</td>
                  </tr>
                ))}
                {rows.map((r) => (
                  <tr key={r.request_id ?? r.id} data-request-id={r.request_id} onClick={() => navigate(`/requests/${encodeURIComponent(r.request_id)}`)}>
                    <td className="small">{time(r.start_time)}</td>
                    <td className="mono small">{r.request_id}</td>
                    <td>
                      <Badge status={r.status} />
                      {r.retry_count ? <span className="muted small"> ↻{r.retry_count}</span> : null}
                    </td>
                    <td>
                      {r.model_name ?? "–"}
                      {r.requested_model && r.requested_model !== r.model_name && (
                        <span className="muted small" title={t("requests.requestedModel")} data-testid="requested-model">
                          {" "}
                          ← {r.requested_model}
                        </span>
                      )}
                      {r.is_streaming && <span className="muted small"> · {t("requests.streaming")}</span>}
                    </td>
                    <td>
                      {r.endpoint_name ?? "–"}
                      {r.group_name && <span className="muted small"> ({r.group_name})</span>}
                    </td>
                    <td>{r.http_status_code ?? "–"}</td>
                    <td>{ms(r.duration_ms)}</td>
                    <td>{num(tokensOf(r))}</td>
                    <td>{usd(r.total_cost_usd)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <div className="pager">
          <button className="small" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - limit))}>
            ← {t("requests.prev")}
          </button>
          <span className="muted small" data-testid="pager">
            {t("requests.page", { page, pages, total })}
          </span>
          <button className="small" disabled={offset + limit >= total} onClick={() => setOffset(offset + limit)}>
            {t("requests.next")} →
          </button>
        </div>
      </Card>
    </div>
  );
}

function attemptsOf(detail: any): any[] {
  const d = detail?.data ?? detail ?? {};
  let attempts = d.attempts ?? d.attempt_trail ?? d.trail;
  if (!attempts && typeof d.attempts_json === "string") {
    try {
      attempts = JSON.parse(d.attempts_json);
    } catch {
      attempts = [];
    }
  }
  return Array.isArray(attempts) ? attempts : [];
}

/** ccf-lifecycle's `outcome` is `{kind, status?, ...}`; older shapes use flat fields. */
function outcomeOf(a: any): { label: string; http: unknown; error: string } {
  const o = a.outcome;
  if (o && typeof o === "object") {
    const { kind, status, ...rest } = o;
    const error = Object.values(rest).filter((v) => typeof v === "string").join(" · ");
    // `status` means the upstream answered: show whether that answer was a success.
    const label =
      kind === "status"
        ? typeof status === "number" && status < 400
          ? "ok"
          : "error"
        : kind === "connect_error"
          ? "unreachable"
          : kind === "header_timeout"
            ? "timeout"
            : String(kind ?? "–");
    return { label, http: status ?? "–", error };
  }
  return {
    label: String(o ?? a.result ?? a.status ?? "–"),
    http: a.http_status ?? a.status_code ?? a.http_status_code ?? "–",
    error: String(a.error ?? a.reason ?? a.failure_reason ?? ""),
  };
}

function RequestDetail({ id }: { id: string }) {
  const t = useT();
  const requestTopic = useTopic("request");
  const detail = useLoad(() => getJson(`/api/v1/requests/${encodeURIComponent(id)}`), [id, requestTopic], 300);
  const live = useLive((s) => s.requests.find((r) => r.request_id === id));
  const raw = detail.data?.data ?? detail.data ?? {};
  const r = raw.request ?? raw;
  const attempts = attemptsOf(detail.data);
  const lifecycle: any[] = r.lifecycle ?? r.events ?? r.transitions ?? [];
  const close = () => navigate("/requests");

  const fields: Array<[string, React.ReactNode]> = [
    [t("common.status"), <Badge status={r.status ?? live?.status} />],
    [t("requests.model"), r.model_name ?? live?.model_name ?? "–"],
    ...((r.requested_model ?? live?.requested_model) && (r.requested_model ?? live?.requested_model) !== (r.model_name ?? live?.model_name)
      ? ([[t("requests.requestedModel"), r.requested_model ?? live?.requested_model]] as Array<[string, React.ReactNode]>)
      : []),
    [t("requests.endpoint"), `${r.endpoint_name ?? live?.endpoint_name ?? "–"}${r.group_name ? ` (${r.group_name})` : ""}`],
    [t("requests.instance"), String(r.instance_id ?? "–")],
    [t("requests.http"), r.http_status_code ?? live?.http_status ?? "–"],
    [t("requests.time"), `${time(r.start_time)} → ${time(r.end_time)}`],
    [t("requests.duration"), ms(r.duration_ms)],
    [t("requests.retries"), r.retry_count ?? live?.retry_count ?? 0],
    ["Client", `${r.client_ip ?? live?.client_ip ?? "–"} · ${r.method ?? ""} ${r.path ?? ""}`],
    [t("requests.tokens"), `in ${num(r.input_tokens)} · out ${num(r.output_tokens)} · cache+ ${num(r.cache_creation_tokens)} · cache↺ ${num(r.cache_read_tokens)}`],
    [t("requests.cost"), usd(r.total_cost_usd)],
  ];
  const reasons = ["failure_reason", "last_failure_reason", "cancel_reason"].filter((k) => r[k]);

  return (
    <div className="drawer-backdrop" onClick={close}>
      <aside className="drawer" data-testid="request-detail" onClick={(e) => e.stopPropagation()}>
        <div className="card-head">
          <h2>{t("requests.detail")}</h2>
          <div className="spacer" />
          <button className="small" onClick={close}>
            {t("common.close")}
          </button>
        </div>
        <div className="mono small muted">{id}</div>
        <ErrorBox error={detail.error && !live ? detail.error : null} />
        <dl className="kv">
          {fields.map(([k, v]) => (
            <FragmentRow key={k} k={k} v={v} />
          ))}
          {reasons.map((k) => (
            <FragmentRow key={k} k={k} v={<span className="bad-text">{String(r[k])}</span>} />
          ))}
        </dl>
        <h3>{t("requests.lifecycle")}</h3>
        <ol className="timeline" data-testid="lifecycle">
          {lifecycle.length > 0
            ? lifecycle.map((s: any, i: number) => (
                <li key={i}>
                  <Badge status={s.status ?? s.state ?? s.to} />
                  <span className="small muted"> {time(s.at ?? s.time ?? s.timestamp)}</span>
                  {s.reason && <span className="small"> · {s.reason}</span>}
                </li>
              ))
            : [
                <li key="start">
                  <Badge status="pending" label="started" /> <span className="small muted">{time(r.start_time)}</span>
                </li>,
                <li key="end">
                  <Badge status={r.status ?? live?.status} /> <span className="small muted">{time(r.end_time ?? r.updated_at)}</span>
                </li>,
              ]}
        </ol>
        <h3>{t("requests.attempts")}</h3>
        {attempts.length === 0 ? (
          <Empty>{t("common.none")}</Empty>
        ) : (
          <div className="table-wrap">
            <table data-testid="attempts">
              <thead>
                <tr>
                  <th>#</th>
                  <th>{t("requests.endpoint")}</th>
                  <th>{t("requests.http")}</th>
                  <th>{t("common.status")}</th>
                  <th>{t("requests.duration")}</th>
                  <th>Error</th>
                </tr>
              </thead>
              <tbody>
                {attempts.map((a: any, i: number) => {
                  const o = outcomeOf(a);
                  return (
                  <tr key={i}>
                    <td>{a.attempt ?? a.index ?? i + 1}</td>
                    <td>
                      {a.endpoint ?? a.endpoint_name ?? "–"}
                      {(a.group ?? a.group_name) && <span className="muted small"> ({a.group ?? a.group_name})</span>}
                    </td>
                    <td>{String(o.http)}</td>
                    <td>
                      <Badge status={o.label} tone={Number(o.http) >= 200 && Number(o.http) < 300 ? "ok" : undefined} />
                    </td>
                    <td>{ms(a.duration_ms ?? a.elapsed_ms ?? a.duration)}</td>
                    <td className="small">{o.error}</td>
                  </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </aside>
    </div>
  );
}

function FragmentRow({ k, v }: { k: string; v: React.ReactNode }) {
  return (
    <>
      <dt>{k}</dt>
      <dd>{v}</dd>
    </>
  );
}
