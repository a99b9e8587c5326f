import { getJson } from "../api";
import { ErrorBox } from "../App";
import { useT } from "../i18n";
import { useLoad, useTopic } from "../store";
import { Card, Empty } from "./common";

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
      <Card testId="config">{data ? <Tree value={data} /> : <Empty>{t("common.loading")}</Empty>}</Card>
    </div>
  );
}
