// Keeps the topology status cells of the admin current: every two seconds it
// asks the changelist's status/ view for each topology's status line and
// replaces the cells that changed. The view renders (and escapes) the HTML.
"use strict";

(function () {
  const INTERVAL_MS = 2000;
  const SELECTOR = "[data-topology-status]";

  async function refresh(url) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) {
      return;
    }
    const { topologies } = await response.json();
    for (const cell of document.querySelectorAll(SELECTOR)) {
      const html = topologies[cell.dataset.topologyStatus];
      if (html !== undefined && cell.innerHTML !== html) {
        cell.innerHTML = html;
      }
    }
  }

  function start() {
    const first = document.querySelector(SELECTOR);
    if (!first) {
      return;
    }
    const url = first.dataset.statusUrl;
    // A failed refresh (server restarting, session gone) waits for the next.
    setInterval(() => refresh(url).catch(() => {}), INTERVAL_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
