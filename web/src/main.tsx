import { createRoot } from "react-dom/client";
import { App } from "./App";
import "./style.css";
import { startLive } from "./store";

startLive();
createRoot(document.getElementById("root")!).render(<App />);
