// The configuration reload banner: shown above every page while the last reload was rejected (the
// previous configuration is still in force), or when it applied but some changes wait for a
// restart. Fed by `config_reload` in the live `status` object (sent after every reload attempt).
import { useT } from "./i18n";
import { useLive } from "./store";

export interface ReloadStatus {
  at: number;
  trigger: string;
  ok: boolean;
  error: string | null;
  applied: string[];
  restart_required: string[];
}

export function ReloadBanner() {
  const t = useT();
  const reload = useLive((s) => s.status?.config_reload as ReloadStatus | null | undefined);
  if (!reload) return null;
  const when = new Date(reload.at * 1000).toLocaleString();
  if (!reload.ok) {
    return (
      <div className="error reload-banner" role="alert" data-testid="reload-error">
        <strong>{t("reload.rejected", { trigger: reload.trigger, when })}</strong>
        <pre className="mono">{reload.error}</pre>
      </div>
    );
  }
  if (reload.restart_required.length > 0) {
    return (
      <div className="warning reload-banner" role="status" data-testid="reload-restart">
        {t("reload.restart", { when, list: reload.restart_required.join("; ") })}
      </div>
    );
  }
  return null;
}
