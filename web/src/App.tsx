import { useEffect, useMemo, useState } from "react";
import { onTokenNeeded, setToken } from "./api";
import { LangContext, initialLang, translator, useT, type Key, type Lang } from "./i18n";
import { Link, usePath } from "./router";
import { useLive } from "./store";
import { Overview } from "./pages/Overview";
import { Endpoints } from "./pages/Endpoints";
import { Groups } from "./pages/Groups";
import { Requests } from "./pages/Requests";
import { Usage } from "./pages/Usage";
import { ConfigPage } from "./pages/Config";
import { Logs } from "./pages/Logs";
import { RoutingPanel } from "./pages/Routing";
import { Keys } from "./pages/Keys";
import { ReloadBanner } from "./ReloadBanner";

type Theme = "light" | "dark";

const PAGES: Array<{ path: string; key: Key; icon: string; render: () => JSX.Element }> = [
  { path: "/", key: "nav.overview", icon: "◎", render: () => <Overview /> },
  { path: "/endpoints", key: "nav.endpoints", icon: "⇄", render: () => <Endpoints /> },
  { path: "/groups", key: "nav.groups", icon: "▦", render: () => <Groups /> },
  { path: "/routing", key: "nav.routing", icon: "⇶", render: () => <RoutingPanel /> },
  { path: "/requests", key: "nav.requests", icon: "≡", render: () => <Requests /> },
  { path: "/usage", key: "nav.usage", icon: "$", render: () => <Usage /> },
  { path: "/keys", key: "nav.keys", icon: "⚿", render: () => <Keys /> },
  { path: "/config", key: "nav.config", icon: "⚙", render: () => <ConfigPage /> },
  { path: "/logs", key: "nav.logs", icon: "☰", render: () => <Logs /> },
];

function initialTheme(): Theme {
  try {
    const saved = localStorage.getItem("ccf-theme");
    if (saved === "light" || saved === "dark") return saved;
  } catch {
    /* ignore */
  }
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function App() {
  const [lang, setLang] = useState<Lang>(initialLang);
  const [theme, setTheme] = useState<Theme>(initialTheme);
  const t = useMemo(() => translator(lang), [lang]);

  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    try {
      localStorage.setItem("ccf-theme", theme);
    } catch {
      /* ignore */
    }
  }, [theme]);
  useEffect(() => {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    try {
      localStorage.setItem("ccf-lang", lang);
    } catch {
      /* ignore */
    }
  }, [lang]);

  const path = usePath();
  const page = PAGES.find((p) => (p.path === "/" ? path === "/" : path === p.path || path.startsWith(p.path + "/"))) ?? PAGES[0];
  const stream = useLive((s) => s.stream);

  return (
    <LangContext.Provider value={{ lang, t }}>
      <div className="layout">
        <aside className="sidebar">
          <div className="brand">
            <span className="logo">cc</span>
            <span>forwarder</span>
          </div>
          <nav>
            {PAGES.map((p) => (
              <Link key={p.path} to={p.path} className={p === page ? "active" : ""} testId={`nav-${p.path.slice(1) || "overview"}`}>
                <span className="icon">{p.icon}</span>
                <span className="label">{t(p.key)}</span>
              </Link>
            ))}
          </nav>
        </aside>
        <div className="main">
          <header className="topbar">
            <h1>{t(page.key)}</h1>
            <div className="spacer" />
            <span className={`stream ${stream}`} data-testid="stream-state" title="/api/v1/stream">
              <span className="dot" /> {t(`stream.${stream}` as Key)}
            </span>
            <button className="ghost" data-testid="lang-toggle" onClick={() => setLang(lang === "en" ? "zh" : "en")}>
              {t("lang.toggle")}
            </button>
            <button className="ghost" data-testid="theme-toggle" title={t("theme.toggle")} onClick={() => setTheme(theme === "dark" ? "light" : "dark")}>
              {theme === "dark" ? "☀" : "☾"}
            </button>
          </header>
          <ReloadBanner />
          <main className="content">{page.render()}</main>
        </div>
      </div>
      <TokenDialog />
    </LangContext.Provider>
  );
}

function TokenDialog() {
  const t = useT();
  const [open, setOpen] = useState(false);
  const [value, setValue] = useState("");
  useEffect(() => onTokenNeeded(setOpen), []);
  if (!open) return null;
  return (
    <div className="modal-backdrop">
      <form
        className="modal"
        data-testid="token-dialog"
        onSubmit={(e) => {
          e.preventDefault();
          if (value.trim()) setToken(value.trim());
        }}
      >
        <h2>{t("auth.title")}</h2>
        <p className="muted">{t("auth.text")}</p>
        <input type="password" autoFocus placeholder={t("auth.placeholder")} value={value} onChange={(e) => setValue(e.target.value)} />
        <div className="row end">
          <button type="submit" className="primary">
            {t("auth.submit")}
          </button>
        </div>
      </form>
    </div>
  );
}

export function ErrorBox({ error }: { error: string | null }) {
  const t = useT();
  if (!error) return null;
  return (
    <div className="error" role="alert">
      {t("common.error")}: {error}
    </div>
  );
}
