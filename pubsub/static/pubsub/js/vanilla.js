/**
 * Vanilla's web client: subscriptions to data sources over one websocket,
 * kept alive across reconnects.
 *
 * It speaks the protocol of docs/protocol.md and mirrors the tables of
 * pubsub/protocol.py. A plain ES module with no dependencies:
 *
 *     import { VanillaClient } from "/static/pubsub/js/vanilla.js";
 *
 *     const client = new VanillaClient();
 *     client.subscribe("weather", { airport: "JFK" }, (data) => show(data));
 *     client.connect();
 *
 * Reconnects back off exponentially with full jitter. After a reconnect every
 * live subscription is sent again with `since`, the last seq it saw, so the
 * server replays what was missed; after an `overflow` error (the page read
 * too slowly) the subscription is sent again with the seq before the gap.
 * A publication is never delivered twice and seqs never go backwards.
 * docs/client.md has the whole story.
 *
 * @module vanilla
 */

// --- Protocol tables (pubsub/protocol.py) ------------------------------------

/** Frames a client sends. */
export const ClientOp = Object.freeze({
  SUBSCRIBE: "subscribe",
  UNSUBSCRIBE: "unsubscribe",
  PING: "ping",
});

/** Frames the server sends. */
export const ServerOp = Object.freeze({
  SUBSCRIBED: "subscribed",
  UNSUBSCRIBED: "unsubscribed",
  DATA: "data",
  STATUS: "status",
  PONG: "pong",
  ERROR: "error",
});

/** Values of an error frame's `code`; none of them closes the connection. */
export const ErrorCode = Object.freeze({
  BAD_FRAME: "bad_frame",
  UNKNOWN_OP: "unknown_op",
  INVALID_ID: "invalid_id",
  DUPLICATE_ID: "duplicate_id",
  UNKNOWN_ID: "unknown_id",
  UNKNOWN_SOURCE: "unknown_source",
  INVALID_PARAMS: "invalid_params",
  TOO_MANY_SUBSCRIPTIONS: "too_many_subscriptions",
  RATE_LIMITED: "rate_limited",
  FORBIDDEN: "forbidden",
  OVERFLOW: "overflow",
  INTERNAL: "internal",
});

/**
 * Codes the server closes the websocket with. 4000-4049 are terminal (fix
 * something before connecting again), 4050-4099 ask for a reconnect with
 * backoff; of the standard codes only 1009 is terminal.
 */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  FORBIDDEN: 4003,
  PROTOCOL_VIOLATION: 4008,
  RATE_LIMITED: 4050,
  SLOW_READER: 4051,
  SERVER_FULL: 4052,
});

/** States of a data source, as status frames report them. */
export const SourceState = Object.freeze({
  STARTING: "starting",
  LIVE: "live",
  STALE: "stale",
  ERROR: "error",
  STOPPED: "stopped",
});

/** States of the client's connection. */
export const ClientState = Object.freeze({
  // connect() was called and the first websocket is opening.
  CONNECTING: "connecting",
  // A websocket is open; subscriptions are (being) sent.
  OPEN: "open",
  // The websocket was lost or refused; another is opened after a backoff.
  RECONNECTING: "reconnecting",
  // Not connected and not trying: before connect(), after close(), or
  // after a terminal close code.
  CLOSED: "closed",
});

/** Which state may follow which. */
const TRANSITIONS = Object.freeze({
  closed: Object.freeze(["connecting"]),
  connecting: Object.freeze(["open", "reconnecting", "closed"]),
  open: Object.freeze(["reconnecting", "closed"]),
  reconnecting: Object.freeze(["open", "closed"]),
});

/** Error codes that mean the server refused a subscribe: it holds no such id. */
const REFUSALS = Object.freeze([
  ErrorCode.BAD_FRAME,
  ErrorCode.INVALID_ID,
  ErrorCode.DUPLICATE_ID,
  ErrorCode.UNKNOWN_SOURCE,
  ErrorCode.INVALID_PARAMS,
  ErrorCode.TOO_MANY_SUBSCRIPTIONS,
  ErrorCode.FORBIDDEN,
]);

const DEFAULTS = Object.freeze({
  // resetAfter: a connection that stayed open this long (ms) resets the
  // backoff, so the next loss retries quickly again.
  backoff: Object.freeze({ initial: 500, max: 30000, factor: 2, resetAfter: 10000 }),
  heartbeat: Object.freeze({ interval: 15000, timeout: 10000 }),
});

// WebSocket.OPEN, spelled out so that an injected WebSocket needs no statics.
const SOCKET_OPEN = 1;

// --- Helpers -----------------------------------------------------------------

/** True if a close code means "do not reconnect as you are". */
export function isTerminalClose(code) {
  return code === CloseCode.MESSAGE_TOO_BIG || (code >= 4000 && code <= 4049);
}

/**
 * The delay (ms) before reconnect attempt `attempt` (0 for the first):
 * "full jitter", a uniform draw from [0, min(max, initial * factor^attempt)).
 */
export function backoffDelay(attempt, { initial, max, factor }, random = Math.random) {
  return random() * Math.min(max, initial * factor ** attempt);
}

/** One JSON spelling of a value: object keys sorted, no spaces. */
export function canonicalJSON(value) {
  if (Array.isArray(value)) {
    return `[${value.map(canonicalJSON).join(",")}]`;
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).filter((key) => value[key] !== undefined);
    const member = (key) => `${JSON.stringify(key)}:${canonicalJSON(value[key])}`;
    return `{${keys.sort().map(member).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** An Error for a close the client will not retry; `code` is the close code. */
export class CloseError extends Error {
  constructor(code, reason) {
    const why = reason ? `: ${reason}` : "";
    super(`the server closed the connection with ${code}${why}`);
    this.name = "CloseError";
    this.code = code;
    this.reason = reason || "";
  }
}

function defaultUrl() {
  if (typeof location === "undefined") {
    throw new TypeError("VanillaClient needs a url outside a browser page");
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/`;
}

/** Call a page's callback; its failure is logged, never the client's. */
function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (error) {
    console.error("vanilla: a callback failed", error);
  }
}

// --- Subscriptions -----------------------------------------------------------

/**
 * What the page holds for one `subscribe()` call. Handles on the same source
 * and params share one server subscription.
 */
export class Subscription {
  #topic;
  #callbacks;
  #release;

  constructor(topic, callbacks, release) {
    this.#topic = topic;
    this.#callbacks = callbacks;
    this.#release = release;
    /** False once unsubscribe() was called. */
    this.active = true;
  }

  /** The source's name. */
  get source() {
    return this.#topic.source;
  }

  /** The params as given to subscribe(). */
  get params() {
    return this.#topic.params;
  }

  /** The seq of the newest publication delivered (0 before the first). */
  get lastSeq() {
    return this.#topic.lastSeq;
  }

  /** The source's state from its latest status frame (a SourceState), or null. */
  get state() {
    return this.#topic.sourceState;
  }

  /** Stop receiving; the server subscription ends with its last handle. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.#release(this);
  }

  /** @internal Deliver one event to this handle's callback. */
  notify(name, ...args) {
    if (this.active) call(this.#callbacks[name], ...args);
  }
}

/** One server subscription: a source and params, and the handles sharing it. */
class Topic {
  constructor(id, key, source, params) {
    this.id = id;
    this.key = key;
    this.source = source;
    this.params = params;
    this.handles = new Set();
    this.lastSeq = 0;
    this.latest = null;
    this.sourceState = null;
    // Sent on the current websocket; confirmed by "subscribed" on it.
    this.sent = false;
    this.live = false;
    // Confirmed once on any websocket: from then on, resubscribe with since.
    this.confirmed = false;
    // The `since` of the subscribe frame in flight, if any.
    this.since = null;
    // The error frame with which the server refused it; never sent again.
    this.refused = null;
  }

  notify(name, ...args) {
    for (const handle of [...this.handles]) handle.notify(name, ...args);
  }
}

// --- The client --------------------------------------------------------------

/**
 * A connection to Vanilla's websocket, with subscriptions that outlive it.
 *
 * Events (`client.on(name, fn)`, which returns a function that removes fn):
 * - "state" (newState, oldState): a ClientState transition.
 * - "error" (errorFrameOrError): every error frame from the server, and a
 *   CloseError when a terminal close code ends the connection.
 * - "resume" ({source, params, resumed, since}): a subscription was sent
 *   again after a reconnect or an overflow. `resumed` false means
 *   publications were missed.
 */
export class VanillaClient {
  #WebSocket;
  #timers;
  #socket = null;
  #attempt = 0;
  #openedAt = null;
  #pending = { reconnect: null, connect: null, ping: null, deadline: null };
  #topics = new Map();
  #byId = new Map();
  #nextId = 1;
  #listeners = new Map();

  /**
   * @param {object} [options]
   * @param {string} [options.url] ws(s)://<page's host>/ws/ by default.
   * @param {Function} [options.WebSocket] the WebSocket class to use.
   * @param {{initial?: number, max?: number, factor?: number, resetAfter?: number}}
   *   [options.backoff] reconnect delays (ms): 500, 30000, 2, 10000.
   * @param {{interval?: number, timeout?: number}} [options.heartbeat]
   *   ping every `interval` ms; a connection silent for `timeout` ms after a
   *   ping (or not open `timeout` ms after dialling) is dead: 15000, 10000.
   * @param {() => number} [options.random] uniform in [0, 1), for jitter.
   * @param {() => number} [options.now] milliseconds, for the backoff reset.
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.timers]
   */
  constructor(options = {}) {
    this.url = options.url ?? defaultUrl();
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.backoff = { ...DEFAULTS.backoff, ...options.backoff };
    this.heartbeat = { ...DEFAULTS.heartbeat, ...options.heartbeat };
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
    this.#timers = options.timers ?? {
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (id) => globalThis.clearTimeout(id),
    };
    /** One of ClientState. */
    this.state = ClientState.CLOSED;
  }

  // --- Public API ------------------------------------------------------------

  /** Open the connection (and keep it open) unless it already is. */
  connect() {
    if (this.state !== ClientState.CLOSED) return this;
    this.#attempt = 0;
    this.#setState(ClientState.CONNECTING);
    this.#dial();
    return this;
  }

  /** Close the connection and stop reconnecting; subscriptions are kept. */
  close() {
    if (this.state === ClientState.CLOSED) return;
    const socket = this.#socket;
    this.#forgetSocket();
    if (socket) socket.close(CloseCode.NORMAL);
    this.#cancel("reconnect");
    this.#setState(ClientState.CLOSED);
  }

  /**
   * Listen to "state", "error" or "resume".
   * @returns {() => void} removes the listener.
   */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.#listeners.get(event).delete(fn);
  }

  /**
   * Receive the publications of `source` for `params`.
   *
   * A handle that joins a server subscription others already hold gets its
   * latest status and publication at once, as a new subscription would.
   *
   * @param {string} source a data source's name.
   * @param {object} [params] the source's params.
   * @param {(data: any, frame: object) => void} onData each publication.
   * @param {object} [callbacks]
   * @param {(state: string, message: string, frame: object) => void}
   *   [callbacks.onStatus] the source's state changed (a SourceState).
   * @param {(frame: object) => void} [callbacks.onError] an error frame for this
   *   subscription: a refusal (it is not retried) or "overflow".
   * @param {(frame: object) => void} [callbacks.onSubscribed] the subscription
   *   is live, after every (re)connect; `frame.resumed === false` means
   *   publications were missed while disconnected.
   * @returns {Subscription}
   */
  subscribe(source, params = {}, onData = null, callbacks = {}) {
    const key = `${source}\n${canonicalJSON(params)}`;
    let topic = this.#topics.get(key);
    const joining = topic !== undefined;
    if (!joining) {
      topic = new Topic(`s${this.#nextId++}`, key, source, params);
      this.#topics.set(key, topic);
      this.#byId.set(topic.id, topic);
    }
    const handle = new Subscription(topic, { ...callbacks, onData }, (gone) =>
      this.#release(topic, gone),
    );
    topic.handles.add(handle);
    if (joining) {
      queueMicrotask(() => this.#catchUp(topic, handle));
    } else if (this.state === ClientState.OPEN) {
      this.#sendSubscribe(topic);
    }
    return handle;
  }

  // --- Connection ------------------------------------------------------------

  #dial() {
    let socket;
    try {
      socket = new this.#WebSocket(this.url);
    } catch (error) {
      // A malformed URL: retrying cannot help.
      this.#emit("error", error);
      this.#setState(ClientState.CLOSED);
      return;
    }
    this.#socket = socket;
    this.#openedAt = null;
    socket.onopen = () => this.#opened(socket);
    socket.onmessage = (event) => this.#received(socket, event.data);
    socket.onclose = (event) => this.#lost(socket, event.code, event.reason);
    // A close event always follows an error event; it is handled there.
    socket.onerror = () => {};
    this.#arm("connect", this.heartbeat.timeout, () => this.#abandon(socket));
  }

  #opened(socket) {
    if (socket !== this.#socket) return;
    this.#cancel("connect");
    this.#openedAt = this.now();
    this.#schedulePing();
    for (const topic of this.#topics.values()) {
      if (!topic.refused) this.#sendSubscribe(topic);
    }
    // Last: a listener may close the client again.
    this.#setState(ClientState.OPEN);
  }

  #lost(socket, code, reason) {
    if (socket !== this.#socket) return;
    const stable =
      this.#openedAt !== null && this.now() - this.#openedAt >= this.backoff.resetAfter;
    this.#forgetSocket();
    if (this.state === ClientState.CLOSED) return;

    // Terminal codes: reconnecting as we are would be refused again.
    if (isTerminalClose(code)) {
      this.#emit("error", new CloseError(code, reason));
      this.#setState(ClientState.CLOSED);
      return;
    }

    // Anything else: try again after a backoff. The state changes last,
    // so that a listener calling close() cancels the retry.
    if (stable) this.#attempt = 0;
    this.#scheduleReconnect();
    if (this.state !== ClientState.RECONNECTING) {
      this.#setState(ClientState.RECONNECTING);
    }
  }

  /** Give up on a socket that went silent: no close handshake is waited for. */
  #abandon(socket) {
    if (!socket || socket !== this.#socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    try {
      socket.close();
    } catch (error) {
      // Closing a dead socket may throw in some browsers; it is gone anyway.
    }
    this.#lost(socket, 1006, "no answer to the heartbeat");
  }

  #scheduleReconnect() {
    const delay = backoffDelay(this.#attempt, this.backoff, this.random);
    this.#attempt += 1;
    this.#arm("reconnect", delay, () => this.#dial());
  }

  /** Detach from the current socket: stop its timers, unsend its subscriptions. */
  #forgetSocket() {
    this.#socket = null;
    this.#openedAt = null;
    this.#cancel("connect");
    this.#cancel("ping");
    this.#cancel("deadline");
    for (const topic of this.#topics.values()) {
      topic.sent = false;
      topic.live = false;
    }
  }

  // --- Heartbeat -------------------------------------------------------------

  #schedulePing() {
    this.#arm("ping", this.heartbeat.interval, () => {
      const socket = this.#socket;
      this.#send({ op: ClientOp.PING });
      // One deadline at a time: a later ping does not push it back.
      if (this.#pending.deadline === null) {
        this.#arm("deadline", this.heartbeat.timeout, () => this.#abandon(socket));
      }
      this.#schedulePing();
    });
  }

  // --- Frames ----------------------------------------------------------------

  #received(socket, text) {
    if (socket !== this.#socket) return;
    // Any frame at all shows the connection is alive.
    this.#cancel("deadline");
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      this.#emit("error", error);
      return;
    }
    this.#handleFrame(frame);
  }

  #handleFrame(frame) {
    const topic = frame.id == null ? undefined : this.#byId.get(frame.id);
    switch (frame.op) {
      case ServerOp.SUBSCRIBED:
        if (topic) this.#subscribed(topic, frame);
        break;
      case ServerOp.DATA:
        if (topic) this.#data(topic, frame);
        break;
      case ServerOp.STATUS:
        if (topic) {
          topic.sourceState = frame.state;
          topic.notify("onStatus", frame.state, frame.message || "", frame);
        }
        break;
      case ServerOp.ERROR:
        this.#error(topic, frame);
        break;
      // pong and unsubscribed need nothing; unknown ops are for newer clients.
    }
  }

  #subscribed(topic, frame) {
    topic.live = true;
    topic.confirmed = true;
    if ("resumed" in frame) {
      // Not resumed: the history does not reach back to `since`, or the
      // server does not know it. Take its seqs from here on as they come.
      if (!frame.resumed) topic.lastSeq = 0;
      this.#emit("resume", {
        source: topic.source,
        params: topic.params,
        resumed: frame.resumed,
        since: topic.since,
      });
    }
    topic.notify("onSubscribed", frame);
  }

  #data(topic, frame) {
    // A publication seen already (or older): never deliver it twice.
    if (!(frame.seq > topic.lastSeq)) return;
    topic.lastSeq = frame.seq;
    topic.latest = frame;
    topic.notify("onData", frame.data, frame);
  }

  #error(topic, frame) {
    if (topic) {
      if (!topic.live && REFUSALS.includes(frame.code)) {
        topic.refused = frame;
        topic.sent = false;
      }
      topic.notify("onError", frame);
      if (topic.live && frame.code === ErrorCode.OVERFLOW) {
        this.#resumeAfterGap(topic, frame.last_seq);
      }
    }
    this.#emit("error", frame);
  }

  /**
   * The server dropped publications of `topic` after seq `since`: the page
   * read too slowly, or a resume found them trimmed from the history. End
   * that server subscription and start another, under a new id, that
   * replays what the topic's history still holds; whatever is still on its
   * way for the old id is ignored.
   */
  #resumeAfterGap(topic, since) {
    if (!Number.isInteger(since)) return;
    this.#send({ op: ClientOp.UNSUBSCRIBE, id: topic.id });
    this.#byId.delete(topic.id);
    topic.id = `s${this.#nextId++}`;
    this.#byId.set(topic.id, topic);
    topic.live = false;
    this.#sendSubscribe(topic, since);
  }

  /** `since`: the seq to resume after; by default the last one delivered. */
  #sendSubscribe(topic, since = topic.confirmed ? topic.lastSeq : null) {
    const frame = {
      op: ClientOp.SUBSCRIBE,
      id: topic.id,
      source: topic.source,
      params: topic.params,
    };
    topic.since = since;
    if (topic.since !== null) frame.since = topic.since;
    topic.sent = this.#send(frame);
  }

  /** A late handle on a shared subscription hears what the first one heard. */
  #catchUp(topic, handle) {
    if (topic.refused) {
      handle.notify("onError", topic.refused);
      return;
    }
    if (topic.live) {
      const { id, source, params } = topic;
      handle.notify("onSubscribed", { op: ServerOp.SUBSCRIBED, id, source, params });
    }
    if (topic.sourceState) handle.notify("onStatus", topic.sourceState, "", null);
    if (topic.latest) handle.notify("onData", topic.latest.data, topic.latest);
  }

  #release(topic, handle) {
    topic.handles.delete(handle);
    if (topic.handles.size > 0) return;
    this.#topics.delete(topic.key);
    this.#byId.delete(topic.id);
    if (topic.sent) this.#send({ op: ClientOp.UNSUBSCRIBE, id: topic.id });
  }

  #send(frame) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== SOCKET_OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  // --- State, events and timers ----------------------------------------------

  #setState(state) {
    const old = this.state;
    if (state === old) return;
    if (!TRANSITIONS[old].includes(state)) {
      throw new Error(`vanilla: no transition from ${old} to ${state}`);
    }
    this.state = state;
    this.#emit("state", state, old);
  }

  #emit(event, ...args) {
    for (const fn of [...(this.#listeners.get(event) || [])]) call(fn, ...args);
  }

  #arm(name, ms, fn) {
    this.#cancel(name);
    this.#pending[name] = this.#timers.setTimeout(() => {
      this.#pending[name] = null;
      fn();
    }, ms);
  }

  #cancel(name) {
    if (this.#pending[name] === null) return;
    this.#timers.clearTimeout(this.#pending[name]);
    this.#pending[name] = null;
  }
}
