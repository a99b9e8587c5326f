// Small shared UI pieces.
import type { ReactNode } from "react";
import { statusClass } from "../format";

export function Card(props: { title?: ReactNode; actions?: ReactNode; children: ReactNode; className?: string; testId?: string }) {
  return (
    <section className={`card ${props.className ?? ""}`} data-testid={props.testId}>
      {(props.title || props.actions) && (
        <div className="card-head">
          <h2>{props.title}</h2>
          <div className="spacer" />
          {props.actions}
        </div>
      )}
      {props.children}
    </section>
  );
}

export function Stat(props: { label: string; value: ReactNode; sub?: ReactNode; testId?: string; tone?: string }) {
  return (
    <div className={`stat ${props.tone ?? ""}`} data-testid={props.testId}>
      <div className="stat-label">{props.label}</div>
      <div className="stat-value">{props.value}</div>
      {props.sub !== undefined && <div className="stat-sub">{props.sub}</div>}
    </div>
  );
}

export function Badge(props: { status: unknown; label?: ReactNode; tone?: string }) {
  return <span className={`badge ${props.tone ?? statusClass(props.status)}`}>{props.label ?? String(props.status ?? "–")}</span>;
}

export function Empty(props: { children: ReactNode }) {
  return <div className="empty">{props.children}</div>;
}

/** Today's start (local midnight) as RFC 3339, for "today" queries. */
export function todayStartIso(): string {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return d.toISOString();
}
