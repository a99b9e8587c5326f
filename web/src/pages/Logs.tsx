import { useMemo, useState } from "react";
import { time } from "../format";
import { useT } from "../i18n";
import { clearLogs, useLive, type LogLine } from "../store";
import { Card, Empty } from "./common";

const LEVELS = ["trace", "debug", "info", "warn", "error"];

export function Logs() {
  const t = useT();
  const logs = useLive((s) => s.logs);
  const [filter, setFilter] = useState("");
  const [level, setLevel] = useState("");
  const [frozen, setFrozen] = useState<LogLine[] | null>(null);
  const shown = useMemo(() => {
    const source = frozen ?? logs;
    const min = level ? LEVELS.indexOf(level) : -1;
    const needle = filter.toLowerCase();
    return source
      .filter((l) => (min < 0 ? true : LEVELS.indexOf(l.level.replace("warning", "warn")) >= min))
      .filter((l) => !needle || l.message.toLowerCase().includes(needle) || JSON.stringify(l.fields).toLowerCase().includes(needle))
      .slice(-500)
      .reverse();
  }, [logs, frozen, filter, level]);

  return (
    <div className="stack">
      <div className="row wrap">
        <input placeholder={t("logs.filter")} value={filter} onChange={(e) => setFilter(e.target.value)} />
        <select value={level} onChange={(e) => setLevel(e.target.value)} aria-label={t("logs.level")}>
          <option value="">{t("common.all")}</option>
          {LEVELS.map((l) => (
            <option key={l} value={l}>
              ≥ {l}
            </option>
          ))}
        </select>
        <button className="small" onClick={() => setFrozen(frozen ? null : logs)}>
          {frozen ? t("logs.resume") : t("logs.pause")}
        </button>
        <button className="small" onClick={() => { clearLogs(); setFrozen(null); }}>
          {t("logs.clear")}
        </button>
      </div>
      <Card testId="logs">
        {shown.length === 0 ? (
          <Empty>{t("logs.empty")}</Empty>
        ) : (
          <div className="logs">
            {shown.map((l) => (
              <div key={l.seq} className={`log-line lvl-${l.level}`}>
                <span className="muted">{time(l.time)}</span> <span className={`lvl`}>{l.level.toUpperCase()}</span> <span>{l.message}</span>{" "}
                {Object.keys(l.fields).length > 0 && <span className="muted mono small">{JSON.stringify(l.fields)}</span>}
              </div>
            ))}
          </div>
        )}
      </Card>
    </div>
  );
}
