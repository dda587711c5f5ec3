/**
 * The demo's departures board: for each New York airport, its latest
 * departures (source "departures") and its weather (source "weather"), live
 * over one VanillaClient.
 *
 * Stable hooks for tests: #connection-state[data-state], and per airport
 * [data-airport=X] .departure-row, [data-source=...] .source-state[data-state].
 */
import { ClientState, VanillaClient } from "../pubsub/js/vanilla.js";

const AIRPORT_NAMES = {
  JFK: "John F. Kennedy International",
  LGA: "LaGuardia",
  EWR: "Newark Liberty International",
};
const MAX_ROWS = 25;
const CONNECTION_LABELS = {
  [ClientState.CONNECTING]: "Connecting…",
  [ClientState.OPEN]: "Live",
  [ClientState.RECONNECTING]: "Reconnecting…",
  [ClientState.CLOSED]: "Offline",
};
const STATUS_LABELS = {
  departed: "Departed",
  delayed: "Delayed",
  cancelled: "Cancelled",
};

// --- Formatting --------------------------------------------------------------

/** "05:17" as it is (replay_flights sends these); 517 -> "05:17"; null -> "–". */
function clockTime(hhmm) {
  if (hhmm === null || hhmm === undefined || hhmm === "") return "–";
  if (typeof hhmm === "string" && hhmm.includes(":")) return hhmm;
  const value = Number(hhmm) % 2400;
  const hours = String(Math.floor(value / 100)).padStart(2, "0");
  const minutes = String(value % 100).padStart(2, "0");
  return `${hours}:${minutes}`;
}

/** 7 -> "+7m", -3 -> "−3m" (a minus sign, not a hyphen). */
function signedMinutes(minutes) {
  return minutes > 0 ? `+${minutes}m` : `\u2212${-minutes}m`;
}

function orDash(value, unit = "") {
  return value === null || value === undefined ? "–" : `${value}${unit}`;
}

/** "Delta Air Lines Inc." -> "Delta Air Lines"; the code if no name. */
function shortCarrier(row) {
  if (!row.carrier_name) return row.carrier || "–";
  return row.carrier_name.replace(/\s+(Inc|Co|Corporation|LLC)\.?$/, "");
}

/** The simulated moment a departure row stands for, as text; or null. */
function rowMoment(row) {
  if (row.departed === null || row.departed === undefined) return null;
  const time = clockTime(row.departed);
  return row.date ? `${row.date} ${time}` : time;
}

// --- Rendering ---------------------------------------------------------------

function field(root, name) {
  return root.querySelector(`[data-field="${name}"]`);
}

function renderAirport(template, code) {
  const section = template.content.firstElementChild.cloneNode(true);
  section.dataset.airport = code;
  field(section, "code").textContent = code;
  field(section, "name").textContent = AIRPORT_NAMES[code] || "";
  return section;
}

function departureRow(row, frame) {
  const tr = document.createElement("tr");
  tr.className = `departure-row status-${row.status || "unknown"}`;
  tr.dataset.seq = frame.seq;
  tr.dataset.flight = row.flight || "";

  const scheduled = clockTime(row.scheduled);
  const time = row.status === "cancelled" ? scheduled : clockTime(row.departed);
  const status = STATUS_LABELS[row.status] || row.status || "–";
  const cells = [
    [time, "time", `scheduled ${scheduled}`],
    [row.flight || "–", "flight", row.tailnum ? `aircraft ${row.tailnum}` : ""],
    [shortCarrier(row), "carrier", row.carrier_name || ""],
    [row.dest || "–", "dest", ""],
    [status, "status", ""],
  ];
  for (const [text, name, title] of cells) {
    const td = document.createElement("td");
    td.className = `col-${name}`;
    td.textContent = text;
    if (title) td.title = title;
    tr.append(td);
  }
  if (row.status !== "cancelled" && row.delay) {
    const delay = document.createElement("span");
    delay.className = "delay";
    delay.textContent = signedMinutes(row.delay);
    tr.lastElementChild.append(" ", delay);
  }
  return tr;
}

function renderWeather(panel, data) {
  let wind = orDash(data.wind_kmh, " km/h");
  if (data.wind_kmh != null && data.wind_dir != null) {
    wind += ` from ${data.wind_dir}°`;
  }
  field(panel, "temp_c").textContent = orDash(data.temp_c);
  field(panel, "wind").textContent = wind;
  field(panel, "humidity").textContent = orDash(data.humidity, " %");
  field(panel, "visibility").textContent = orDash(data.visibility_mi, " mi");
  field(panel, "pressure").textContent = orDash(data.pressure_hpa, " hPa");
  field(panel, "precip").textContent = orDash(data.precip_mm, " mm");
  field(panel, "dewpoint").textContent = orDash(data.dewpoint_c, " °C");
  field(panel, "hour").textContent = `Observed ${data.hour} (New York)`;
}

function showSourceState(panel, state, message) {
  const badge = panel.querySelector(".source-state");
  badge.dataset.state = state;
  badge.textContent = state;
  badge.title = message || "";
}

// --- The board ---------------------------------------------------------------

/** Build the board in `document` and keep it live; returns the client. */
export function start({ client = new VanillaClient() } = {}) {
  const board = document.getElementById("board");
  const template = document.getElementById("airport-template");
  const indicator = document.getElementById("connection-state");
  const notice = document.getElementById("notice");
  const clock = field(document.getElementById("demo-clock"), "clock");
  let newest = "";

  function notify(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function tick(moment) {
    // Departures come in order of departure: the newest is the clock.
    if (moment && moment > newest) {
      newest = moment;
      clock.textContent = moment;
    }
  }

  function watchDepartures(section, airport) {
    const panel = section.querySelector('[data-source="departures"]');
    const rows = panel.querySelector(".departure-rows");
    client.subscribe("departures", { airport }, (row, frame) => {
      rows.querySelector(".empty-row")?.remove();
      rows.prepend(departureRow(row, frame));
      while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
      tick(rowMoment(row));
    }, {
      onStatus: (state, message) => showSourceState(panel, state, message),
      onError: (frame) => showSourceState(panel, "error", frame.message),
    });
  }

  function watchWeather(section, airport) {
    const panel = section.querySelector('[data-source="weather"]');
    client.subscribe("weather", { airport }, (data) => {
      renderWeather(panel, data);
      if (!newest) clock.textContent = data.hour;
    }, {
      onStatus: (state, message) => showSourceState(panel, state, message),
      onError: (frame) => showSourceState(panel, "error", frame.message),
    });
  }

  // Phase: one column per airport, each with its two subscriptions.
  for (const airport of board.dataset.airports.split(/\s+/)) {
    const section = renderAirport(template, airport);
    board.append(section);
    watchWeather(section, airport);
    watchDepartures(section, airport);
  }

  // Phase: the connection's state, and what it lost while away.
  client.on("state", (state) => {
    indicator.dataset.state = state;
    indicator.querySelector(".connection-label").textContent = CONNECTION_LABELS[state];
    if (state === ClientState.OPEN) notify("");
  });
  client.on("resume", ({ source, params, resumed }) => {
    if (!resumed) {
      notify(`Some ${source} updates for ${params.airport} were missed while offline.`);
    }
  });
  client.on("error", (error) => {
    if (error instanceof Error) notify(`Disconnected: ${error.message}`);
  });

  client.connect();
  return client;
}

if (typeof document !== "undefined" && document.getElementById("board")) {
  window.vanillaBoard = start();
}
