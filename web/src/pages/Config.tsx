import { getJson } from "../api";
import { ErrorBox } from "../App";
import { time } from "../format";
import { useT } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { Badge, Card, Empty } from "./common";

function isSecret(value: unknown): boolean {
  return typeof value === "string" && /^\*{3,}|^\[?(masked|redacted)\]?$|\*{4,}/i.test(value);
}

function Tree({ value, depth = 0 }: { value: any; depth?: number }) {
  if (value === null || value === undefined) return <span className="muted">null</span>;
  if (Array.isArray(value)) {
    if (value.length === 0) return <span className="muted">[]</span>;
    return (
      <ol className="tree-list">
        {value.map((v, i) => (
          <li key={i}>
            <Tree value={v} depth={depth + 1} />
          </li>
        ))}
      </ol>
    );
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 0) return <span className="muted">{"{}"}</span>;
    return (
      <dl className={`tree ${depth === 0 ? "root" : ""}`}>
        {entries.map(([k, v]) => (
          <div key={k} className="tree-row">
            <dt>{k}</dt>
            <dd>
              <Tree value={v} depth={depth + 1} />
            </dd>
          </div>
        ))}
      </dl>
    );
  }
  return <span className={`mono ${isSecret(value) ? "secret" : typeof value}`}>{typeof value === "string" ? value : String(value)}</span>;
}

export function ConfigPage() {
  const t = useT();
  const topic = useTopic("config");
  const config = useLoad(() => getJson("/api/v1/config"), [topic]);
  const data = config.data?.data ?? config.data;
  return (
    <div className="stack">
      <ErrorBox error={config.error} />
      <p className="muted">{t("config.masked")}</p>
      <WebhooksCard />
      <Card testId="config">{data ? <Tree value={data} /> : <Empty>{t("common.loading")}</Empty>}</Card>
    </div>
  );
}

/** `GET /api/v1/webhooks`: each receiver's delivery counters, refreshed every 5 s. */
function WebhooksCard() {
  const t = useT();
  const tick = useInterval(5000);
  const topic = useTopic("config");
  const hooks = useLoad(() => getJson("/api/v1/webhooks"), [tick, topic]);
  const list: any[] = hooks.data?.webhooks ?? [];
  return (
    <Card title={t("webhooks.title")} testId="webhooks">
      <ErrorBox error={hooks.error} />
      {list.length === 0 ? (
        <Empty>{hooks.data ? t("webhooks.none") : t("common.loading")}</Empty>
      ) : (
        <div className="table-wrap">
          <table data-testid="webhooks-table">
            <thead>
              <tr>
                <th>#</th>
                <th>{t("webhooks.url")}</th>
                <th>{t("webhooks.events")}</th>
                <th>{t("webhooks.signed")}</th>
                <th>{t("webhooks.delivered")}</th>
                <th>{t("webhooks.failed")}</th>
                <th>{t("webhooks.dropped")}</th>
                <th>{t("webhooks.failedTries")}</th>
                <th>{t("webhooks.queued")}</th>
                <th>{t("webhooks.lastAttempt")}</th>
                <th>{t("webhooks.lastError")}</th>
              </tr>
            </thead>
            <tbody>
              {list.map((hook) => (
                <tr key={hook.index}>
                  <td>{hook.index}</td>
                  <td className="mono">{hook.url}</td>
                  <td>{(hook.events ?? []).join(", ")}</td>
                  <td>{hook.signed ? t("webhooks.yes") : t("webhooks.no")}</td>
                  <td>{hook.delivered}</td>
                  <td>{hook.failed > 0 ? <Badge status="failed" tone="bad" label={hook.failed} /> : hook.failed}</td>
                  <td>{hook.dropped > 0 ? <Badge status="dropped" tone="warn" label={hook.dropped} /> : hook.dropped}</td>
                  <td>{hook.failed_tries}</td>
                  <td>{hook.queued}</td>
                  <td>
                    {time(hook.last_attempt)}
                    {hook.last_status != null ? ` (${hook.last_status})` : ""}
                  </td>
                  <td className="muted">{hook.last_error ? `${time(hook.last_error_at)}: ${hook.last_error}` : "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Card>
  );
}
