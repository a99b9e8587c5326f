// A thin React wrapper around Chart.js (bundled from npm; no CDN).
import { useEffect, useRef } from "react";
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  DoughnutController,
  ArcElement,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartConfiguration,
} from "chart.js";

Chart.register(
  BarController,
  BarElement,
  CategoryScale,
  DoughnutController,
  ArcElement,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
);

export const PALETTE = ["#4f7cff", "#22b07d", "#f0a030", "#e5484d", "#9b6bff", "#17a2b8", "#d16ba5", "#7a8599"];

function themeColors() {
  const css = getComputedStyle(document.documentElement);
  return {
    text: css.getPropertyValue("--muted").trim() || "#666",
    grid: css.getPropertyValue("--grid").trim() || "rgba(0,0,0,.08)",
  };
}

export function ChartView({
  config,
  height = 240,
  label,
}: {
  config: ChartConfiguration;
  height?: number;
  label?: string;
}) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart | null>(null);
  const theme = document.documentElement.dataset.theme;

  useEffect(() => {
    if (!canvas.current) return;
    const colors = themeColors();
    Chart.defaults.color = colors.text;
    Chart.defaults.borderColor = colors.grid;
    const full: ChartConfiguration = {
      ...config,
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        ...config.options,
      },
    };
    if (chart.current && (chart.current.config as any).type === config.type) {
      chart.current.data = full.data;
      chart.current.options = full.options ?? {};
      chart.current.update("none");
    } else {
      chart.current?.destroy();
      chart.current = new Chart(canvas.current, full);
    }
  }, [config, theme]);

  useEffect(() => () => chart.current?.destroy(), []);

  return (
    <div className="chart" style={{ height }}>
      <canvas ref={canvas} role="img" aria-label={label} />
    </div>
  );
}

/** Line datasets with palette colours. */
export function lineDatasets(series: Array<{ label: string; data: number[] }>, fill = false) {
  return series.map((s, i) => ({
    label: s.label,
    data: s.data,
    borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length] + "33",
    fill,
    tension: 0.3,
    pointRadius: 0,
    borderWidth: 2,
  }));
}
