import { useEffect, useRef, useState } from "react";
import { getJson, postJson } from "../api";
import { ErrorBox } from "../App";
import { clock, parseDurationMs } from "../format";
import { useT, type Key } from "../i18n";
import { useInterval, useLoad, useTopic } from "../store";
import { Badge, Card, Empty } from "./common";

/** The group's state as one of five keys (the API may send the original's Chinese labels). */
export function groupState(g: any): "active" | "paused" | "cooldown" | "unhealthy" | "available" {
  if (g.is_active) return "active";
  if (g.manually_paused) return "paused";
  if (g.in_cooldown) return "cooldown";
  if ((g.healthy_endpoints ?? 1) === 0) return "unhealthy";
  return "available";
}

const TONE = { active: "ok", paused: "warn", cooldown: "warn", unhealthy: "bad", available: "info" } as const;

export function Groups() {
  const t = useT();
  const topic = useTopic("group");
  const endpointTopic = useTopic("endpoint");
  const slow = useInterval(10_000);
  useInterval(1000); // countdowns
  const groups = useLoad(() => getJson("/api/v1/groups"), [topic, endpointTopic, slow], 100);
  const [error, setError] = useState<string | null>(null);
  const [message, setMessage] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [durations, setDurations] = useState<Record<string, string>>({});

  // Remember when each cooldown value was read, to count down locally between updates.
  const fetchedAt = useRef(Date.now());
  useEffect(() => {
    fetchedAt.current = Date.now();
  }, [groups.data]);

  const list: any[] = groups.data?.groups ?? [];
  const act = async (name: string, action: string, body?: unknown) => {
    setBusy(`${name}/${action}`);
    setError(null);
    try {
      const r = await postJson(`/api/v1/groups/${encodeURIComponent(name)}/${action}`, body);
      setMessage(r?.message ?? t("common.ok"));
      groups.reload();
    } catch (e: any) {
      setError(String(e?.message ?? e));
    } finally {
      setBusy(null);
    }
  };

  return (
    <div className="stack">
      <ErrorBox error={error ?? groups.error} />
      {message && <div className="notice">{message}</div>}
      <div className="muted small">
        {t("groups.autoSwitch")}: {groups.data?.auto_switch_enabled === undefined || groups.data?.auto_switch_enabled === null ? "–" : String(groups.data.auto_switch_enabled)}
      </div>
      {list.length === 0 && <Empty>{groups.loading ? t("common.loading") : t("common.none")}</Empty>}
      <div className="cards" data-testid="groups">
        {list.map((g) => {
          const state = groupState(g);
          const remaining = parseDurationMs(g.cooldown_remaining) ?? 0;
          const left = Math.max(0, remaining - (Date.now() - fetchedAt.current));
          const key = (a: string) => `${g.name}/${a}`;
          return (
            <Card
              key={g.name}
              testId={`group-${g.name}`}
              className={state === "active" ? "active-card" : ""}
              title={
                <span>
                  {g.name} <span className="muted small">#{g.priority}</span>
                </span>
              }
              actions={<Badge status={state} tone={TONE[state]} label={t(`groups.state.${state}` as Key)} />}
            >
              <div className="group-body">
                <div className="meter">
                  <div className="meter-fill" style={{ width: `${g.total_endpoints ? (100 * (g.healthy_endpoints ?? 0)) / g.total_endpoints : 0}%` }} />
                </div>
                <div className="small muted">
                  {t("groups.endpoints")}: {g.healthy_endpoints ?? 0}/{g.total_endpoints ?? 0} {t("endpoints.healthy").toLowerCase()}
                  {g.activation_type === "forced" ? " · forced" : ""}
                </div>
                {(g.in_cooldown || left > 0) && (
                  <div className="countdown" data-testid={`cooldown-${g.name}`}>
                    {t("groups.cooldown")}: <span className="mono">{clock(left)}</span>
                  </div>
                )}
                <div className="row wrap">
                  {g.can_activate !== false && state !== "active" && (
                    <button className="small primary" disabled={busy === key("activate")} onClick={() => act(g.name, "activate")} data-testid={`activate-${g.name}`}>
                      {t("groups.activate")}
                    </button>
                  )}
                  {g.can_force_activate && (
                    <button
                      className="small danger"
                      disabled={busy === key("force")}
                      onClick={() => window.confirm(t("groups.forceConfirm")) && act(g.name, "activate?force=true")}
                    >
                      {t("groups.force")}
                    </button>
                  )}
                  {(g.can_pause ?? !g.manually_paused) && (
                    <>
                      <input
                        className="narrow"
                        placeholder="30m"
                        title={t("groups.duration")}
                        value={durations[g.name] ?? ""}
                        onChange={(e) => setDurations({ ...durations, [g.name]: e.target.value })}
                      />
                      <button
                        className="small"
                        disabled={busy === key("pause")}
                        data-testid={`pause-${g.name}`}
                        onClick={() => act(g.name, "pause", durations[g.name] ? { duration: durations[g.name] } : {})}
                      >
                        {t("groups.pause")}
                      </button>
                    </>
                  )}
                  {(g.can_resume ?? g.manually_paused) && (
                    <button className="small" disabled={busy === key("resume")} data-testid={`resume-${g.name}`} onClick={() => act(g.name, "resume")}>
                      {t("groups.resume")}
                    </button>
                  )}
                </div>
              </div>
            </Card>
          );
        })}
      </div>
    </div>
  );
}
